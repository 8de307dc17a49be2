"""The shared-data files (``--data-dir``) one dataset can use, looked up one way for every caller."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import InputFileError
from .base import dataset_info, dataset_resources

DESCRIPTION_FALLBACKS = {"cupl": ("cupl", "cupl-base")}
"""ImageNet's full CuPL file is ``cupl.json`` when present, else the ``cupl-base.json`` sentences."""


@dataclass(frozen=True)
class DataFiles:
    """Files of ``dataset`` under ``data_dir`` (None: no shared data, every lookup finds nothing)."""

    dataset: str
    data_dir: Path | None

    def find(self, kind: str) -> Path | None:
        """The file of ``kind`` the dataset declares (``classnames``, ``cupl``, ``clip-e`` ...), if present."""
        if self.data_dir is None:
            return None
        rel = dataset_info(self.dataset).resources().get(kind)
        path = Path(self.data_dir) / rel if rel else None
        return path if path is not None and path.is_file() else None

    def shared(self, name: str) -> Path | None:
        """A file at the top of the data dir that is not tied to a dataset (``waffle_word_list.json``)."""
        path = None if self.data_dir is None else Path(self.data_dir) / name
        return path if path is not None and path.is_file() else None

    def descriptions(self, kind: str) -> Path | None:
        """The description file of ``kind`` (``cupl`` or ``clip-d``), with ImageNet's CuPL fallback."""
        return next((p for k in DESCRIPTION_FALLBACKS.get(kind, (kind,)) if (p := self.find(k)) is not None), None)

    def require_descriptions(self, kind: str) -> Path:
        """Like :meth:`descriptions`, but a missing file is an error naming where it was expected."""
        found = self.descriptions(kind)
        if found is not None:
            return found
        if self.data_dir is None:
            raise InputFileError(f"{kind} descriptions of {self.dataset} need --descriptions FILE.json or "
                                 "--data-dir DIR")
        return dataset_resources(self.dataset, self.data_dir, [kind])[kind]  # raises, naming the file

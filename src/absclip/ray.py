"""Label a corpus on a Ray cluster with Ray Data (``pip install 'absclip[ray]'``).

:class:`RayLabeller` is a stateful callable for ``Dataset.map_batches``: each actor loads the model
once, prepares the method's text side once, and then labels batches of rows with a ``path`` column
(image files) or ``shard`` / ``member`` / ``offset`` / ``size`` columns (WebDataset samples, see
:mod:`absclip.webdataset`). :func:`label_with_ray` runs it over a list of inputs and hands the records
to the caller batch by batch, so ``absclip classify --engine ray`` streams and resumes its output
exactly like a local run.

Multi-node: start ``ray start --head`` on one machine and ``ray start --address HEAD:6379`` on the
others, then run ``absclip classify ... --engine ray --ray-address HEAD:6379`` (or ``auto`` on a node
of the cluster).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import UnsupportedError
from .methods import MethodOptions
from .webdataset import TarMember

Record = dict[str, Any]


@dataclass
class LabelSpec:
    """Everything an actor needs to build the classifier (picklable: it travels to every actor)."""

    classes: list[str]
    method: str = "clip"
    options: MethodOptions = field(default_factory=MethodOptions)
    model: str = "open_clip:ViT-B-16"
    pretrained: str | None = "openai"
    device: str = "auto"
    dtype: str = "fp32"
    trust_checkpoint: bool = False
    descriptions: str | None = None
    cache_dir: str | None = None
    top_k: int = 5
    batch_size: int = 8


def _require_ray() -> None:
    try:
        import ray.data  # noqa: F401  (only checks that Ray Data is installed)
    except ImportError:
        raise UnsupportedError("the Ray engine needs Ray Data: pip install 'absclip[ray]'") from None


def rows_for(inputs: Sequence[Any]) -> list[dict[str, Any]]:
    """Dataset rows for image paths and :class:`TarMember` s (flat columns: Arrow holds them natively)."""
    rows = []
    for item in inputs:
        if isinstance(item, TarMember):
            rows.append({"path": str(item), "shard": item.shard, "member": item.name, "offset": item.offset,
                         "size": item.size})
        else:
            rows.append({"path": str(item), "shard": "", "member": "", "offset": -1, "size": -1})
    return rows


class RayLabeller:
    """``map_batches`` callable: one classifier per actor, built from a :class:`LabelSpec`."""

    def __init__(self, spec: LabelSpec) -> None:
        from .backbones import create_backbone
        from .classifier import ZeroShotClassifier
        from .labelling import Labeller
        from .methods import create_method

        method = create_method(spec.method, spec.options)
        backbone = create_backbone(spec.model, pretrained=spec.pretrained, device=spec.device, dtype=spec.dtype,
                                   trust_checkpoint=spec.trust_checkpoint)
        clf = ZeroShotClassifier(backbone, method, spec.classes, spec.descriptions, cache_dir=spec.cache_dir,
                                 batch_size=spec.batch_size)
        self.labeller = Labeller(clf, spec.top_k, spec.batch_size)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        from .parallel import decode_source

        items = []
        for path, shard, member, offset, size in zip(batch["path"], batch["shard"], batch["member"],
                                                     batch["offset"], batch["size"], strict=True):
            source = TarMember(str(shard), str(member), int(offset), int(size)) if int(size) >= 0 else str(path)
            image, error = decode_source(source)
            items.append((str(path), image, error))
        records, _ = self.labeller.label(items)
        return {"path": [r["path"] for r in records], "label": [r["label"] or "" for r in records],
                "score": [float("nan") if r["score"] is None else r["score"] for r in records],
                "top_k": [json.dumps(r["top_k"]) for r in records], "error": [r["error"] or "" for r in records]}


def _record(row: dict[str, Any]) -> Record:
    return {"path": str(row["path"]), "label": str(row["label"]) or None,
            "score": None if row["error"] else float(row["score"]), "top_k": json.loads(str(row["top_k"])),
            "error": str(row["error"]) or None}


def label_with_ray(spec: LabelSpec, inputs: Sequence[Any], address: str | None = None, actors: int = 1,
                   gpus_per_actor: float = 0.0, on_error: Callable[[str, str], None] | None = None,
                   ) -> Iterator[list[Record]]:
    """Label ``inputs`` on Ray (a local instance when ``address`` is None) and yield records per batch.

    Records arrive in input order (the dataset preserves order), so the caller can stream them.
    """
    if not inputs:
        return
    _require_ray()
    import ray
    import ray.data

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 **({} if address else {"num_cpus": max(actors, 1)}))
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    # a few blocks per actor, so every actor gets work and a failed block is cheap to redo
    ds = ray.data.from_items(rows_for(inputs), override_num_blocks=max(1, min(len(inputs), 4 * actors)))
    labelled = ds.map_batches(RayLabeller, fn_constructor_args=(dataclasses.replace(spec),),
                              batch_size=spec.batch_size, num_gpus=gpus_per_actor,
                              compute=ray.data.ActorPoolStrategy(size=actors))
    for batch in labelled.iter_batches(batch_size=spec.batch_size, batch_format="pandas"):
        records = [_record(row) for row in batch.to_dict("records")]
        if on_error is not None:
            for r in records:
                if r["error"]:
                    on_error(r["path"], r["error"])
        yield records

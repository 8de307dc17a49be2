"""Reading checkpoint files without running code from them unless the user says so.

Every failure to read a checkpoint is one line that names the file: a file that holds code (a
TorchScript archive, or a pickle of Python objects besides tensors) says so and that
``--trust-checkpoint`` is for trusted sources only; a corrupt or mislabelled file says what it is.
:func:`checkpoint_errors` gives loaders outside absclip (``transformers``' ``from_pretrained``) the
same messages.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from ..errors import AbsclipError, InputFileError, UnsupportedError

# what torch's weights-only unpickler says when a pickle names a global (a class or a function) it does
# not allow: the file holds objects whose loading runs code
_WEIGHTS_ONLY_REFUSAL = "Weights only load failed"
_PICKLE_FILES = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def is_torchscript_archive(path: Path) -> bool:
    """TorchScript archives (how OpenAI's own ``.pt`` files are packed) carry a ``code/`` folder."""
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in name or name.startswith("code/") for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def looks_like_pickle(path: Path) -> bool:
    """A torch.save file: a zip archive (torch >= 1.6) or a raw pickle (protocol 2+ starts with 0x80)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError:
        return False
    return head.startswith(b"PK\x03\x04") or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04",
                                                                                b"\x05"))


def holds_code(exc: BaseException | None) -> bool:
    """Whether ``exc``, or an exception behind it, is torch's weights-only loader refusing a pickle's objects."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, pickle.UnpicklingError) and _WEIGHTS_ONLY_REFUSAL in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def code_message(where: str | Path, trust_applies: bool = True, detail: str = "") -> str:
    """The one line for a checkpoint that holds code: what it is, and what --trust-checkpoint is for."""
    head = f"{where}: {detail}" if detail else f"{where}: "
    text = (f"{head}the checkpoint contains code (pickled Python objects besides tensors, which run when "
            "they are loaded), and absclip loads checkpoints weights-only. --trust-checkpoint is for trusted "
            "sources only")
    if trust_applies:
        return text + ": pass it only if you trust where this file came from."
    return (text + ", and a transformers folder is always loaded weights-only: convert the weights to "
            "safetensors (save_pretrained(..., safe_serialization=True)) where you trust them.")


def load_state_dict_file(path: str | Path, trust_checkpoint: bool = False) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors``, a pickled state dict (``weights_only=True``) or, with
    ``trust_checkpoint``, a TorchScript archive or a pickle of other objects. Unwraps
    ``{"state_dict": ...}`` and ``module.`` prefixes."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        state = _load_safetensors(path, trust_checkpoint)
    else:
        state = _load_pickle(path, trust_checkpoint)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise InputFileError(f"{path}: no state dict inside")
    if not all(isinstance(k, str) for k in state):
        raise InputFileError(f"{path}: not a state dict (expected parameter names mapped to tensors)")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _load_safetensors(path: Path, trust_checkpoint: bool) -> object:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:  # a truncated, foreign or renamed file
        if looks_like_pickle(path):
            # a torch.save file renamed: read it as what it is, under the same weights-only rule
            return _load_pickle(path, trust_checkpoint, "named .safetensors but is a PyTorch pickle; ")
        raise InputFileError(f"{path}: not a valid safetensors file ({_one_line(exc)})") from exc


def _load_pickle(path: Path, trust_checkpoint: bool, detail: str = "") -> object:
    if is_torchscript_archive(path):
        if not trust_checkpoint:
            raise UnsupportedError(
                f"{path}: {detail}a TorchScript archive, which contains code that would run on load. "
                "--trust-checkpoint is for trusted sources only: pass it (trust_checkpoint=True) only if you "
                "trust where it came from."
            )
        try:
            return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
        except Exception as exc:  # TorchScript raises RuntimeError subclasses of many kinds
            raise InputFileError(f"{path}: not a loadable TorchScript archive ({_one_line(exc)})") from exc
    try:
        return _torch_load(path, weights_only=True)
    except Exception as exc:  # pickle errors come in many types; all mean the same to the user
        if not holds_code(exc):
            raise InputFileError(
                f"{path}: {detail}not a loadable weights-only checkpoint ({_one_line(exc)})"
            ) from exc
        if not trust_checkpoint:
            raise InputFileError(code_message(path, detail=detail)) from None
    # the user vouched for this file: a full unpickle, which may run its code
    try:
        return _torch_load(path, weights_only=False)
    except Exception as exc:
        raise InputFileError(f"{path}: not a loadable checkpoint ({_one_line(exc)})") from exc


def _torch_load(path: Path, weights_only: bool) -> object:
    # through a file handle: given a path, torch dispatches on the name (a ".safetensors" name goes to
    # the safetensors reader), and a renamed pickle must be read as the pickle it is
    with open(path, "rb") as handle:
        return torch.load(handle, map_location="cpu", weights_only=weights_only)


@contextmanager
def checkpoint_errors(where: str | Path) -> Iterator[None]:
    """Around a loader outside absclip (``from_pretrained`` of a ``hf:`` or ``dino:`` folder): a weights
    file that holds code, or a corrupt one, becomes one error line naming ``where`` and its pickle
    files, instead of a traceback that ends with torch's advice to set ``weights_only=False``.
    Other exceptions pass through unchanged."""
    try:
        yield
    except AbsclipError:
        raise
    except Exception as exc:
        if holds_code(exc):
            files = _pickle_files(where)
            named = (f"{Path(where) / files[0]}" if len(files) == 1
                     else f"{where} ({', '.join(files)})" if files else str(where))
            raise InputFileError(code_message(named, trust_applies=False)) from None
        if _is_corrupt_weights(exc):
            raise InputFileError(f"{where}: a weights file is corrupt or truncated ({_one_line(exc)})") from exc
        raise


def _pickle_files(where: str | Path) -> list[str]:
    folder = Path(where).expanduser()
    try:
        if not folder.is_dir():
            return []
        return sorted({p.name for pattern in _PICKLE_FILES for p in folder.glob(pattern)})[:4]
    except OSError:
        return []


def _is_corrupt_weights(exc: BaseException) -> bool:
    from safetensors import SafetensorError

    if isinstance(exc, (pickle.UnpicklingError, SafetensorError, EOFError, zipfile.BadZipFile)):
        return True
    # torch's zip reader: "PytorchStreamReader failed reading zip archive: ..."
    return isinstance(exc, RuntimeError) and "PytorchStreamReader" in str(exc)


def _one_line(exc: BaseException) -> str:
    """An exception as a short single line: its type and first line, without terminal colour codes."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    first = text.splitlines()[0] if text else ""
    first = first.split(". ")[0]  # torch's messages go on with advice after their first sentence
    return f"{type(exc).__name__}: {first[:200]}" if first else type(exc).__name__


# ---- weights that do not fit their model --------------------------------------------------------------------
def key_mismatch(missing: list[str], unexpected: list[str], shapes: list[str] | None = None) -> str:
    """'3 missing (first: a, b, c); 1 unexpected (first: d)' for a checkpoint that does not fit its model."""

    def first(keys: list[str], label: str) -> str:
        return f"{len(keys)} {label} (first: {', '.join(keys[:3])})"

    parts = [first(keys, label) for keys, label in ((missing, "missing"), (unexpected, "unexpected"),
                                                    (shapes or [], "of another shape")) if keys]
    return "; ".join(parts)


_TORCH_KEYS = re.compile(r"(Missing|Unexpected) key\(s\) in state_dict: (.*?)\.\s*$")
_TORCH_SHAPE = re.compile(r"size mismatch for ([^:]+):")


@contextmanager
def state_dict_errors(where: str | Path, what: str) -> Iterator[None]:
    """Around a loader that builds a model from a state dict and loads it strictly (open_clip's
    ``build_model_from_openai_state_dict``): torch's multi-line strict-load error, or the ``KeyError`` of a
    weight the architecture is read from, becomes one line naming the file, the model kind and the first keys."""
    try:
        yield
    except KeyError as exc:
        raise InputFileError(f"{where}: not a complete {what} checkpoint: missing {exc.args[0]!s} "
                             "(absclip never runs a model with randomly initialised weights)") from None
    except RuntimeError as exc:
        text = str(exc)
        if "Error(s) in loading state_dict" not in text:
            raise
        found: dict[str, list[str]] = {"Missing": [], "Unexpected": []}
        for line in text.splitlines():
            match = _TORCH_KEYS.search(line.strip())
            if match:
                found[match.group(1)] = [k.strip().strip('"') for k in match.group(2).split(",")]
        shapes = _TORCH_SHAPE.findall(text)
        detail = key_mismatch(found["Missing"], found["Unexpected"], shapes) or _one_line(exc)
        raise InputFileError(f"{where}: the weights do not fit a {what} model: {detail}; absclip never runs a "
                             "model with randomly initialised weights") from None

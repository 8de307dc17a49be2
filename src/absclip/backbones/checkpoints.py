"""Reading checkpoint files without running code from them unless the user says so."""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch

from ..errors import InputFileError, UnsupportedError


def is_torchscript_archive(path: Path) -> bool:
    """TorchScript archives (how OpenAI's own ``.pt`` files are packed) carry a ``code/`` folder."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name or name.startswith("code/") for name in archive.namelist())


def load_state_dict_file(path: str | Path, trust_checkpoint: bool = False) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors``, a pickled state dict (``weights_only=True``) or, with
    ``trust_checkpoint``, a TorchScript archive. Unwraps ``{"state_dict": ...}`` and ``module.`` prefixes."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    elif is_torchscript_archive(path):
        if not trust_checkpoint:
            raise UnsupportedError(
                f"{path} is a TorchScript archive, which contains code that would run on load. "
                "If you trust where it came from, pass --trust-checkpoint (trust_checkpoint=True)."
            )
        state = dict(torch.jit.load(str(path), map_location="cpu").state_dict())
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle errors come in many types; all mean the same to the user
            raise InputFileError(
                f"{path}: not a loadable weights-only checkpoint ({type(exc).__name__}: {str(exc)[:200]})"
            ) from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise InputFileError(f"{path}: no state dict inside")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state

"""A recorder of float64 work: every torch call whose result is a float64 tensor that a test cares about,
counted by function and by the innermost absclip frame that made it (tests/test_accelerator_path.py on the
CPU, tests/test_cuda.py on a GPU)."""

from __future__ import annotations

import os
import traceback
from collections import Counter
from collections.abc import Callable, Set
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

Where = tuple[str, str]
"""(file under absclip/, function name) of the innermost absclip frame."""


def innermost_absclip_frame() -> Where:
    frames = [f for f in traceback.extract_stack() if f"absclip{os.sep}" in f.filename]
    if not frames:
        return "?", "?"
    return frames[-1].filename.split(f"absclip{os.sep}")[-1], frames[-1].name


class Float64Calls(TorchFunctionMode):
    """Counts the torch calls that return a float64 tensor ``keep`` accepts, made anywhere but in
    ``allowed`` locations, as ``calls["func in file:function"]``."""

    def __init__(self, keep: Callable[[torch.Tensor], bool], allowed: Set[Where] = frozenset()) -> None:
        super().__init__()
        self.keep, self.allowed = keep, allowed
        self.calls: Counter[str] = Counter()

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.dtype is torch.float64 and self.keep(t):
                where = innermost_absclip_frame()
                if where not in self.allowed:
                    self.calls[f"{getattr(func, '__name__', func)} in {where[0]}:{where[1]}"] += 1
        return out

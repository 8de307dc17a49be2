"""The methods registry: ``create_method("abs", options)``, ``list_methods()``.

Adding a method = one module whose class is decorated with ``@register_method``, imported below.
"""

from __future__ import annotations

from . import (  # noqa: F401  (imported to register them; gda, tda, tip_adapter adapt beyond zero-shot)
    abs,
    awt,
    clip,
    clip_d,
    clip_e,
    cupl,
    dsel,
    fudd,
    gda,
    mce,
    perception_clip,
    tda,
    tip_adapter,
    waffle,
    wca,
    zero,
    zpe,
)
from .base import METHODS, Method, MethodOptions, TextInputs, register_method


def create_method(name: str, options: MethodOptions | None = None) -> Method:
    return METHODS.create(name, options=options)


def list_methods(pattern: str = "*", adaptive: bool = False) -> list[str]:
    """The methods ``classify`` and ``plan`` can run: zero-shot ones, and transductive ones (fitted on the
    unlabelled images being classified, in two passes); ``adaptive=True`` adds the few-shot and test-time
    ones, which need a support set or a test stream."""
    return [n for n in METHODS.names(pattern)
            if adaptive or getattr(METHODS.get(n), "setting", "zero-shot") in ("zero-shot", "transductive")]


__all__ = ["METHODS", "Method", "MethodOptions", "TextInputs", "create_method", "list_methods", "register_method"]

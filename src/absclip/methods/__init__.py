"""The methods registry: ``create_method("abs", options)``, ``list_methods()``.

Adding a method = one module whose class is decorated with ``@register_method``, imported below.
"""

from __future__ import annotations

from . import (  # noqa: F401  (imported to register them; gda, tda, tip_adapter adapt beyond zero-shot)
    abs,
    clip,
    clip_d,
    clip_e,
    cupl,
    gda,
    mce,
    tda,
    tip_adapter,
    waffle,
    wca,
)
from .base import METHODS, Method, MethodOptions, TextInputs, register_method


def create_method(name: str, options: MethodOptions | None = None) -> Method:
    return METHODS.create(name, options=options)


def list_methods(pattern: str = "*", adaptive: bool = False) -> list[str]:
    """The zero-shot methods (what ``classify`` and ``plan`` can run); ``adaptive=True`` adds the few-shot and
    test-time ones (``setting`` other than zero-shot), which need a support set or a test stream."""
    return [n for n in METHODS.names(pattern)
            if adaptive or getattr(METHODS.get(n), "setting", "zero-shot") == "zero-shot"]


__all__ = ["METHODS", "Method", "MethodOptions", "TextInputs", "create_method", "list_methods", "register_method"]

"""The methods registry: ``create_method("abs", options)``, ``list_methods()``.

Adding a method = one module whose class is decorated with ``@register_method``, imported below.
"""

from __future__ import annotations

from . import abs, clip, clip_d, clip_e, cupl, mce, waffle, wca  # noqa: F401  (imported to register them)
from .base import METHODS, Method, MethodOptions, TextInputs, register_method


def create_method(name: str, options: MethodOptions | None = None) -> Method:
    return METHODS.create(name, options=options)


def list_methods(pattern: str = "*") -> list[str]:
    return METHODS.names(pattern)


__all__ = ["METHODS", "Method", "MethodOptions", "TextInputs", "create_method", "list_methods", "register_method"]

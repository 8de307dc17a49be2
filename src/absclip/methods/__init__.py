"""The methods registry: ``create_method("abs", options)``, ``list_methods()``."""

from __future__ import annotations

from ..registry import Registry
from .abs import AbsMethod
from .base import Method, MethodOptions, TextInputs
from .clip import ClipMethod
from .clip_d import ClipDescriptorMethod
from .clip_e import ClipEnsembleMethod
from .cupl import CuplMethod
from .mce import MceMethod
from .waffle import WaffleMethod
from .wca import WcaMethod

METHODS: Registry[Method] = Registry("method")
for _cls in (ClipMethod, ClipEnsembleMethod, ClipDescriptorMethod, WaffleMethod, CuplMethod, WcaMethod, MceMethod,
             AbsMethod):
    METHODS.register(_cls.name)(_cls)


def create_method(name: str, options: MethodOptions | None = None) -> Method:
    return METHODS.create(name, options=options)


def list_methods(pattern: str = "*") -> list[str]:
    return METHODS.names(pattern)


__all__ = ["METHODS", "Method", "MethodOptions", "TextInputs", "create_method", "list_methods"]

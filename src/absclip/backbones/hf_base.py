"""What every ``hf:`` family adapter shares: the registry keyed by ``config.json``'s ``model_type``, the
text tower (the library's own ``get_text_features``, so each family pools and projects its text its own
way), the logit scale and the processor-driven pixel settings.

A family adapter subclasses :class:`HFBackbone`, names the transformers class it loads
(``model_class``) and implements the vision primitives of :mod:`.base`. It registers itself with
``@register_hf("model_type", ...)``; :mod:`.hf_load` picks it by the directory's ``model_type``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar

import torch
from torch import nn

from ..pixels.spec import PreprocessSpec
from ..registry import Registry
from .base import Backbone

HF_FAMILIES: Registry[HFBackbone] = Registry("transformers model type")


def register_hf(*model_types: str) -> Callable[[type[HFBackbone]], type[HFBackbone]]:
    """Register an adapter class for each ``model_type`` it was written for (and only those)."""

    def decorator(cls: type[HFBackbone]) -> type[HFBackbone]:
        for model_type in model_types:
            HF_FAMILIES.register(model_type)(cls)
        return cls

    return decorator


class HFBackbone(Backbone):
    """A transformers dual encoder loaded from a hub id or a ``save_pretrained`` directory."""

    model_class: ClassVar[str] = ""
    """The transformers class whose weights the directory must hold completely (e.g. ``CLIPModel``)."""
    family: ClassVar[str] = ""
    """Human name of the family, for messages and the README table."""
    pad_to_max_length: ClassVar[bool] = False
    """SigLIP's text tower pools the last position and was trained on texts padded to the full length, so
    its texts must be padded the same way; the others pool an EOS/CLS token and pad to the longest text."""

    def __init__(self, model: nn.Module, tokenizer: Callable[..., object], name: str, device: torch.device,
                 dtype: torch.dtype, preprocess: PreprocessSpec) -> None:
        self.model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.name = name
        self.device = device
        self.dtype = dtype
        self.preprocess = preprocess
        self.model_type = str(model.config.model_type)
        self.context_length = self._context_length()
        self.embed_dim = self._embed_dim()
        self._setup_vision()

    _grid: int | None = None  # the token grid side, set by ``_setup_vision``

    @property
    def grid_size(self) -> int | None:
        return self._grid

    # ---- set-up, per family ---------------------------------------------------------------------
    def _setup_vision(self) -> None:
        """Read the vision tower's shape (``_grid``, heads, prefix count) from the model's config."""

    def _context_length(self) -> int:
        return int(self.model.config.text_config.max_position_embeddings)

    def _embed_dim(self) -> int:
        with torch.inference_mode():
            return int(self._encode_text_batch(["x"]).shape[-1])

    @classmethod
    def default_spec(cls, config: object) -> PreprocessSpec:
        """Pixel settings when the directory has no ``preprocessor_config.json``: the family's processor defaults."""
        size = int(config.vision_config.image_size)  # type: ignore[attr-defined]
        return PreprocessSpec(size=size)

    # ---- text -----------------------------------------------------------------------------------
    def _encode_text_batch(self, texts: Sequence[str]) -> torch.Tensor:
        padding = "max_length" if self.pad_to_max_length else True
        batch = self.tokenizer(list(texts), padding=padding, truncation=True, max_length=self.context_length,
                               return_tensors="pt").to(self.device)
        out = self.model.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return out if isinstance(out, torch.Tensor) else out.pooler_output  # transformers 5: a model output

    # ---- scores ---------------------------------------------------------------------------------
    @property
    def logit_scale(self) -> float:
        """exp of the learned log-scale (CLIP, SigLIP, AltCLIP, GroupViT, MetaCLIP 2)."""
        return float(self.model.logit_scale.detach().float().exp().flatten()[0])

    def _unsupported(self, what: str, option: str) -> str:
        """The one line for a capability this family lacks: the model, what it cannot do, the option that avoids it."""
        return f"{self.name} ({self.family}) {what}; use {option}"

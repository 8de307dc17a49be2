"""The Python API: a zero-shot classifier built from a backbone, a method, classes and descriptions."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .backbones import Backbone, create_backbone
from .errors import InputFileError, UnsupportedError
from .methods import Method, MethodOptions, TextInputs, create_method
from .text import ClassList, Descriptions, TextEmbedder, load_classes, load_descriptions
from .views import CropPlan, ViewExtractor

ImageInput = Image.Image | torch.Tensor | str | os.PathLike[str]


@dataclass
class Prediction:
    """logits [B, C] (float32, CPU) with the class list and the crop plans used (empty for full-image methods).

    ``probabilities`` [B, C] are the softmax of the logits times the method's probability scale (the
    model's logit scale for cosine scores; the mean over views for soft-matching scores).
    """

    logits: torch.Tensor
    classes: ClassList
    plans: list[CropPlan] = field(default_factory=list)
    probabilities: torch.Tensor | None = None

    @property
    def labels(self) -> list[str]:
        return [self.classes[i] for i in self.logits.argmax(dim=1).tolist()]

    def topk(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(probabilities, indices), each [B, k]."""
        probs = self.probabilities if self.probabilities is not None else self.logits.softmax(dim=1)
        return probs.topk(min(k, probs.shape[1]), dim=1)


class ZeroShotClassifier:
    """Classify images among ``classes`` with ``method``; text embeddings are prepared once.

    Args:
        backbone: a :class:`~absclip.backbones.Backbone` (see :func:`absclip.create_backbone`).
        method: a method name (``absclip.list_methods()``) or instance.
        classes: class names, a class file or a comma list.
        descriptions: a ``{class: [text, ...]}`` file or resolved :class:`Descriptions`.
        options: method settings; defaults reproduce the papers' reference settings.
        saliency: for ABS, a saliency spec overriding ``options.saliency`` (``dino``, ``dino:/dir``, ``uniform``...).
        cache_dir: where text embeddings are cached ("" disables caching).
        batch_size: images per view-extraction batch.
    """

    def __init__(
        self,
        backbone: Backbone,
        method: str | Method,
        classes: ClassList | str | Sequence[str],
        descriptions: Descriptions | str | os.PathLike[str] | None = None,
        options: MethodOptions | None = None,
        saliency: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        batch_size: int = 8,
    ) -> None:
        self.backbone = backbone
        self.classes = classes if isinstance(classes, ClassList) else load_classes(classes)  # type: ignore[arg-type]
        if descriptions is not None and not isinstance(descriptions, Descriptions):
            descriptions = load_descriptions(self.classes, descriptions)
        self.descriptions = descriptions
        self.method = _method_with(method, options, saliency)
        self.batch_size = batch_size
        embedder = TextEmbedder(backbone, None if cache_dir is None else str(cache_dir))
        self.method.prepare(TextInputs(backbone, embedder, self.classes, descriptions))
        self.extractor = ViewExtractor.for_method(self.method, backbone)

    @classmethod
    def create(
        cls,
        classes: ClassList | str | Sequence[str],
        method: str = "clip",
        model: str = "open_clip:ViT-B-16",
        pretrained: str | None = "openai",
        descriptions: str | os.PathLike[str] | None = None,
        device: str = "auto",
        dtype: str = "fp32",
        trust_checkpoint: bool = False,
        **kwargs: object,
    ) -> ZeroShotClassifier:
        options = kwargs.pop("options", None)
        saliency = kwargs.pop("saliency", None)
        chosen = _method_with(method, options, saliency)  # type: ignore[arg-type]  # bad settings fail before loading
        backbone = create_backbone(model, pretrained=pretrained, device=device, dtype=dtype,
                                   trust_checkpoint=trust_checkpoint)
        return cls(backbone, chosen, classes, descriptions, **kwargs)  # type: ignore[arg-type]

    def predict(
        self,
        images: Sequence[ImageInput],
        keys: Sequence[str] | None = None,
        plans: dict[str, CropPlan] | Sequence[CropPlan] | None = None,
    ) -> Prediction:
        """Classify PIL images, image paths or uint8 tensors [3, H, W].

        ``keys`` name each image for crop sampling and plans (default: the path, or the position in
        ``images``); the same key and seed give the same crops. ``plans`` supplies crops instead of
        sampling them (a sequence aligned with ``images`` or a dict by key).
        """
        keys = list(keys) if keys is not None else [_default_key(im, i) for i, im in enumerate(images)]
        if self.transductive:  # fitted on all of these images at once, not batch by batch
            observations, used = self.observe(images, keys, plans)
            return self.conclude(observations, used)
        logits, probs, used = [], [], []
        for start, batch, batch_keys in self._batches(images, keys):
            batch_plans = _select_plans(plans, batch_keys, start)
            # supplied plans may differ in crop count: score each group of equal count, rows back in order
            grouped = self.extractor.groups([to_uint8_tensor(im) for im in batch], batch_keys, batch_plans)
            scores = [self.method.score(g.views).float().cpu() for g in grouped.groups]
            scales = [self.method.probability_scale(self.backbone, g.views) for g in grouped.groups]
            logits.append(grouped.assemble(scores))
            probs.append(grouped.assemble([(s * c).softmax(dim=1) for s, c in zip(scores, scales, strict=True)]))
            used.extend(grouped.plans)
        return Prediction(torch.cat(logits), self.classes, used, torch.cat(probs))

    @property
    def transductive(self) -> bool:
        """The method scores from the whole unlabelled set (ZPE, FuDD): :meth:`observe`, then :meth:`conclude`."""
        return getattr(self.method, "setting", "zero-shot") == "transductive"

    def observe(
        self,
        images: Sequence[ImageInput],
        keys: Sequence[str] | None = None,
        plans: dict[str, CropPlan] | Sequence[CropPlan] | None = None,
    ) -> tuple[Any, list[CropPlan]]:
        """A transductive method's first pass: its per-image observations (rows in ``images`` order, joined
        with the observations' own ``cat``) and the crop plans used. Stateless, so batches may be observed
        in any order, by any process, and joined later."""
        keys = list(keys) if keys is not None else [_default_key(im, i) for i, im in enumerate(images)]
        parts, used = [], []
        with torch.inference_mode():
            for start, batch, batch_keys in self._batches(images, keys):
                grouped = self.extractor.groups([to_uint8_tensor(im) for im in batch], batch_keys,
                                                _select_plans(plans, batch_keys, start))
                if len(grouped.groups) != 1:
                    raise UnsupportedError(f"method {self.method.name!r} observes every image with the same number "
                                           "of crops: give it crop plans of one crop count (or none)")
                parts.append(self.method.observe(grouped.groups[0].views))  # type: ignore[attr-defined]
                used.extend(grouped.plans)
        return type(parts[0]).cat(parts), used

    def conclude(self, observations: Any, plans: Sequence[CropPlan] = ()) -> Prediction:
        """A transductive method's second step: fit on every observation at once and score them all.

        Its logits are softmax inputs already (see :mod:`absclip.methods.adaptive`): the probabilities
        are their softmax."""
        self.method.reset()  # type: ignore[attr-defined]
        logits = self.method.run_stream(observations, list(range(len(observations))))  # type: ignore[attr-defined]
        logits = logits.float().cpu()
        return Prediction(logits, self.classes, list(plans), logits.softmax(dim=1))

    def _batches(self, images: Sequence[ImageInput], keys: list[str]) -> Iterator[tuple[int, list, list[str]]]:
        for start in range(0, len(images), self.batch_size):
            yield start, list(images[start : start + self.batch_size]), keys[start : start + self.batch_size]


def _method_with(method: str | Method, options: MethodOptions | None, saliency: str | None) -> Method:
    """The method to run: ``saliency``, if given, replaces the options' saliency source."""
    if isinstance(method, Method):
        if saliency is None:
            return method
        return type(method)(dataclasses.replace(method.options, saliency=saliency))
    if saliency is not None:
        options = dataclasses.replace(options or MethodOptions(), saliency=saliency)
    return create_method(method, options)


def _default_key(image: ImageInput, index: int) -> str:
    return str(image) if isinstance(image, (str, os.PathLike)) else str(index)


def _select_plans(plans: dict[str, CropPlan] | Sequence[CropPlan] | None, keys: list[str],
                  start: int) -> list[CropPlan] | None:
    if plans is None:
        return None
    if isinstance(plans, dict):
        missing = [k for k in keys if k not in plans]
        if missing:
            raise InputFileError(
                f"no crop plan for {missing[:3]}: plans are matched by image key (the path as given on the "
                "command line), so run `absclip plan` and `classify --plans` on the same paths"
            )
        return [plans[k] for k in keys]
    return list(plans[start : start + len(keys)])


def to_uint8_tensor(image: ImageInput) -> torch.Tensor:
    """[3, H, W] uint8 from a path (robust loader), a PIL image, or a tensor (uint8, or float in 0..1)."""
    from .images import image_to_tensor, load_image, to_rgb

    if isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"image tensors must be [3, H, W], got {tuple(image.shape)}")
        if image.dtype == torch.uint8:
            return image
        return (image.float().clamp(0, 1) * 255).round().to(torch.uint8)
    if isinstance(image, (str, os.PathLike)):
        image = load_image(Path(image))
    return image_to_tensor(to_rgb(image))

"""The view pipeline (DESIGN.md §5): images -> [saliency] -> plans -> full / raw-crop / feature-crop embeddings.

Batched throughout: one saliency pass per batch, crops cut by two matrix products per image, the
encoder run over micro-batches of crops, the full image run once up to the feature layer, and all
feature windows zoomed and finished together. No Python loop runs per crop.

Two stages, as the ABS paper times them (Table 9): :meth:`ViewExtractor.prepare` (preprocessing,
saliency, crop sampling and the raw crops' pixels) and :meth:`ViewExtractor.encode` (every encoder
call); ``extractor(images, keys)`` runs both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from ..attention import Saliency, SaliencyPool, SaliencySource
from ..backbones import Backbone
from ..backbones.tokens import TokenMap
from ..errors import InputFileError, UnsupportedError
from ..pixels import preprocess_images
from .augment import FEATURE_AUGMENTS, RAW_AUGMENTS
from .config import CropKind, ViewConfig
from .plans import CropPlan
from .resized import sample_resized_plan
from .samplers import sample_abs_plan, sample_random_plan


class ScoresViews(Protocol):
    """What :meth:`ViewExtractor.for_method` needs of a method (``absclip.methods.Method``)."""

    def view_config(self) -> ViewConfig: ...


@dataclass
class ViewSet:
    """Embeddings (L2-normalised float32): full [B, D]; raw [B, N, D] or None; feature [B, N, D] or None.

    A backbone with Q > 1 embeddings per view (``queries_per_view``, BLIP-2) adds a query axis before D:
    full [B, Q, D], raw / feature [B, N, Q, D]; :mod:`absclip.scoring` takes the max over it."""

    full: torch.Tensor
    raw: torch.Tensor | None = None
    feature: torch.Tensor | None = None

    @classmethod
    def empty(cls, backbone: Backbone) -> ViewSet:
        """No images: full [0, D] ([0, Q, D] with Q queries per view), so it concatenates with real views."""
        queries = backbone.queries_per_view
        return cls(full=torch.zeros(0, *([queries] if queries > 1 else []), backbone.embed_dim))

    def crops(self) -> torch.Tensor:
        """All crop views [B, V, D] (raw then feature; [B, V, Q, D] with queries)."""
        parts = [v for v in (self.raw, self.feature) if v is not None]
        if not parts:
            return self.full[:, None]
        return torch.cat(parts, dim=1)


@dataclass
class Sampling:
    """The crop plans of a batch and, when a saliency source drew them, its maps."""

    plans: list[CropPlan]
    saliency: Saliency | None = None


@dataclass
class PreparedViews:
    """Everything before the encoder: full-image pixels [B, 3, S, S] on the device, the plans, and the
    raw views' pixels [B·N, 3, S, S] (None without raw views)."""

    full_pixels: torch.Tensor
    plans: list[CropPlan]
    raw_pixels: torch.Tensor | None = None


@dataclass
class ViewGroup:
    """The images of a batch that have one crop count: their positions in the batch and their views."""

    indices: list[int]
    views: ViewSet


@dataclass
class GroupedViews:
    """A batch's views split into groups of equal crop count (supplied plans may differ per image).

    Every method scores each image on its own, so scoring each group and putting the rows back in
    batch order (:meth:`assemble`) gives each image exactly the scores it gets alone.
    """

    groups: list[ViewGroup]
    plans: list[CropPlan]  # in batch order

    def assemble(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        """Per-group results (one row per image, in each group's order) as one tensor in batch order."""
        if len(self.groups) == 1:
            return parts[0]
        size = sum(len(g.indices) for g in self.groups)
        out = parts[0].new_empty((size, *parts[0].shape[1:]))
        for group, part in zip(self.groups, parts, strict=True):
            out[torch.tensor(group.indices, device=out.device)] = part
        return out


def default_micro_batch(device: torch.device) -> int:
    """Crops per encoder call. On CPU small batches stay in cache (8 is ~13% faster per crop than 32
    for ViT-B/16 on this project's 2-core CI machine); GPUs want larger ones."""
    return 64 if device.type == "cuda" else 8


class ViewExtractor:
    """Views of ``config`` from ``backbone``; ``saliency`` guides ABS crops (not needed with given plans).

    Build one for a method with :meth:`for_method`.
    """

    def __init__(self, backbone: Backbone, config: ViewConfig, saliency: SaliencySource | None = None) -> None:
        reason = backbone.capabilities["feature crops"]
        if config.feature and reason is not None:
            raise UnsupportedError(reason)
        if config.feature and config.feature_augment == "highlight-attn" and backbone.attention_bias_reason:
            raise UnsupportedError(backbone.attention_bias_reason)  # refused before any image work
        self.backbone = backbone
        self.config = config
        self.saliency = saliency
        self.micro_batch = config.micro_batch or default_micro_batch(backbone.device)
        self.layer = backbone.block_index(config.feature_layer) if backbone.is_vit else -1

    @classmethod
    def for_method(cls, method: ScoresViews, backbone: Backbone, saliency: SaliencyPool | None = None) -> ViewExtractor:
        """The extractor of the views ``method`` scores; its saliency source comes from ``saliency`` (a
        pool shared between extractors, so each model loads once) or is loaded now."""
        config = method.view_config()
        source = None
        if config.uses_saliency:
            assert config.saliency is not None
            source = (saliency or SaliencyPool(backbone)).get(config.saliency)
        return cls(backbone, config, source)

    # ---- stage 1: plans and pixels ---------------------------------------------------------------
    def sample(self, images: Sequence[torch.Tensor], keys: Sequence[str]) -> Sampling:
        """Crop plans for uint8 images [3, H, W] (any device), one per key, and the saliency behind them."""
        cfg, bb = self.config, self.backbone
        sizes = [(int(im.shape[2]), int(im.shape[1])) for im in images]
        if cfg.crops is CropKind.RANDOM:
            return Sampling([sample_random_plan(w, h, bb.preprocess, bb.grid_size, cfg.random, cfg.seed, k)
                             for (w, h), k in zip(sizes, keys, strict=True)])
        if cfg.crops is CropKind.RESIZED:  # ZERO / AWT (views/resized.py)
            return Sampling([sample_resized_plan(w, h, bb.preprocess, bb.grid_size, cfg.resized, cfg.seed, k)
                             for (w, h), k in zip(sizes, keys, strict=True)])
        if cfg.crops is None:
            raise UnsupportedError("full-image views have no crop plans")
        if self.saliency is None:
            raise UnsupportedError("attention-guided crops need a saliency source (or supply crop plans)")
        sal = self.saliency(images)
        plans = [sample_abs_plan(sal.maps[i], sal.extents[i], w, h, bb.preprocess, bb.grid_size, cfg.abs, cfg.seed,
                                 keys[i], informative=sal.informative)
                 for i, (w, h) in enumerate(sizes)]
        return Sampling(plans, sal)

    def make_plans(self, images: Sequence[torch.Tensor], keys: Sequence[str]) -> list[CropPlan]:
        return self.sample(images, keys).plans

    @torch.inference_mode()
    def prepare(self, images: Sequence[torch.Tensor], keys: Sequence[str],
                plans: Sequence[CropPlan] | None = None) -> PreparedViews:
        """Stage 1: preprocessing, saliency and crop sampling (unless ``plans`` are given), raw crops' pixels."""
        cfg, bb = self.config, self.backbone
        images = [im.to(bb.device, non_blocking=True) for im in images]  # overlaps the copy of pinned inputs
        full_pixels = preprocess_images(images, bb.preprocess)
        if cfg.crops is None:
            return PreparedViews(full_pixels, [])
        used = list(plans) if plans is not None else self.make_plans(images, keys)
        _check_plans(used, images, keys, need_windows=cfg.feature, grid=bb.grid_size)
        raw = self._raw_pixels(images, used) if cfg.raw else None
        return PreparedViews(full_pixels, used, raw)

    # ---- stage 2: the encoder ----------------------------------------------------------------------
    @torch.inference_mode()
    def encode(self, prepared: PreparedViews) -> ViewSet:
        """Stage 2: the full image, the raw crops and the feature windows through the encoder.

        Every image of the batch must have the same number of crops; :meth:`encode_groups` takes any.
        """
        counts = sorted({len(p.boxes) for p in prepared.plans})
        if len(counts) > 1:
            raise InputFileError(f"the crop plans of this batch have {counts} crops per image; views of "
                                 "different counts cannot share a tensor: use ViewExtractor.groups()")
        return self.encode_groups(prepared).groups[0].views

    @torch.inference_mode()
    def encode_groups(self, prepared: PreparedViews) -> GroupedViews:
        """Stage 2 for any crop counts: every encoder call still covers the whole batch (the crops are
        encoded as one flat list), and only the finished embeddings are split by crop count."""
        cfg, bb = self.config, self.backbone
        plans = prepared.plans
        if cfg.feature and cfg.crops is not None:
            tokens = bb.tokens_before_block(prepared.full_pixels, self.layer)
            full = bb.finish_from_block(tokens, self.layer)
            feature = self._feature_views(tokens, plans)
        else:
            full, feature = self._encode(prepared.full_pixels), None
        raw = self._encode(prepared.raw_pixels) if prepared.raw_pixels is not None else None
        if not plans:
            return GroupedViews([ViewGroup(list(range(len(full))), ViewSet(full=full))], [])
        counts = [len(p.boxes) for p in plans]
        by_count: dict[int, list[int]] = {}
        for i, n in enumerate(counts):
            by_count.setdefault(n, []).append(i)
        if len(by_count) == 1:  # the usual case: one group, the flat views reshaped without a copy
            n = counts[0]
            views = ViewSet(full=full, raw=_per_image(raw, len(plans), n), feature=_per_image(feature, len(plans), n))
            return GroupedViews([ViewGroup(list(range(len(plans))), views)], list(plans))
        starts = torch.tensor([0, *counts]).cumsum(0)
        groups = []
        for n, indices in by_count.items():
            pick = torch.tensor(indices)
            rows = (starts[pick][:, None] + torch.arange(n)).flatten().to(full.device)  # their crops, in order
            views = ViewSet(full=full[pick.to(full.device)],
                            raw=_per_image(None if raw is None else raw[rows], len(indices), n),
                            feature=_per_image(None if feature is None else feature[rows], len(indices), n))
            groups.append(ViewGroup(indices, views))
        return GroupedViews(groups, list(plans))

    def __call__(self, images: Sequence[torch.Tensor], keys: Sequence[str],
                 plans: Sequence[CropPlan] | None = None) -> tuple[ViewSet, list[CropPlan]]:
        prepared = self.prepare(images, keys, plans)
        return self.encode(prepared), prepared.plans

    def groups(self, images: Sequence[torch.Tensor], keys: Sequence[str],
               plans: Sequence[CropPlan] | None = None) -> GroupedViews:
        """Like calling the extractor, for batches whose (supplied) plans differ in crop count."""
        return self.encode_groups(self.prepare(images, keys, plans))

    def _encode(self, pixels: torch.Tensor) -> torch.Tensor:
        step = self.micro_batch
        return torch.cat([self.backbone.encode_image(pixels[i : i + step]) for i in range(0, len(pixels), step)])

    def _raw_pixels(self, images: Sequence[torch.Tensor], plans: Sequence[CropPlan]) -> torch.Tensor:
        """[ΣN, 3, S, S], image by image; the images may have different crop counts."""
        # crops are cut per image (sizes differ) but encoded in micro-batches across the batch
        augment = RAW_AUGMENTS.get(self.config.raw_augment)
        return torch.cat([augment(im, torch.tensor(p.boxes), self.backbone.preprocess)
                          for im, p in zip(images, plans, strict=True)])

    def _feature_views(self, tokens: TokenMap, plans: Sequence[CropPlan]) -> torch.Tensor:
        """[ΣN, D]: every plan's windows in plan order; the plans may have different window counts."""
        device = tokens.grid.device
        counts = torch.tensor([len(p.windows) for p in plans], device=device)
        windows = torch.tensor([w for p in plans for w in p.windows], device=device)  # [ΣN, 4]
        owner = torch.arange(len(plans), device=device).repeat_interleave(counts)
        augment = FEATURE_AUGMENTS.get(self.config.feature_augment)
        step = self.micro_batch
        out = []
        for i in range(0, len(windows), step):
            maps, bias = augment(tokens, owner[i : i + step], windows[i : i + step])
            out.append(self.backbone.finish_from_block(maps, self.layer, attn_bias=bias))
        return torch.cat(out)


def _per_image(flat: torch.Tensor | None, images: int, crops: int) -> torch.Tensor | None:
    """Flat crop embeddings [images·crops, (Q,) D] as [images, crops, (Q,) D]."""
    return None if flat is None else flat.view(images, crops, *flat.shape[1:])


def _check_plans(plans: Sequence[CropPlan], images: Sequence[torch.Tensor], keys: Sequence[str],
                 need_windows: bool, grid: int | None) -> None:
    """Plans against the images and the model they meet; an error names the plan's file and line."""
    if len(plans) != len(images):
        raise InputFileError(f"{len(plans)} crop plans for {len(images)} images: supply one plan per image")
    for plan, image, key in zip(plans, images, keys, strict=True):
        if not isinstance(plan, CropPlan):
            raise InputFileError(f"the crop plan for {key} is a {type(plan).__name__}, not a CropPlan")
        plan.validate()  # plans built in Python get the checks a plan file gets
        at = f"{plan.source}: " if plan.source else ""
        size = (int(image.shape[2]), int(image.shape[1]))
        if (plan.width, plan.height) != size:
            raise InputFileError(f"{at}plan for {key} is for a {plan.width}×{plan.height} image, "
                                 f"the image is {size[0]}×{size[1]}")
        if not plan.boxes:
            raise InputFileError(f"{at}plan for {key} has no boxes")
        if need_windows and len(plan.windows) != len(plan.boxes):
            raise InputFileError(f"{at}plan for {key} has {len(plan.windows)} windows for {len(plan.boxes)} boxes "
                                 "(plans without windows work only without feature views, --no-feature)")
        if need_windows and plan.grid != grid:
            # windows index the token grid: on another grid they would select other regions, or none
            raise InputFileError(f"{at}plan for {key} has windows on a {plan.grid}×{plan.grid} token grid, but the "
                                 f"model's grid is {grid}×{grid}: write the plans with this model (absclip plan)")

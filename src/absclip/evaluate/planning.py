"""What to extract: the distinct views a set of methods scores, and which samples to evaluate."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from ..data import LabelledImages
from ..methods import Method
from ..views import ViewConfig


def normalise_view_config(config: ViewConfig) -> ViewConfig:
    """Drop settings that do not change the views, so equal views get equal configs.

    The full view does not depend on the seed; ``micro_batch`` only groups encoder calls.
    """
    if not config.has_crops:
        return ViewConfig()
    return dataclasses.replace(config, micro_batch=None)


def plan_views(methods: Sequence[Method]) -> tuple[list[ViewConfig], list[int], list[int]]:
    """The distinct views to extract for ``methods``.

    Returns (configs, assignment, sources): the normalised configs; for each method the index of the
    config it scores; for each config the index of the first method that wants it (whose own config,
    micro-batch included, builds the extractor). Full-image-only methods reuse the full view of a crop
    config when there is one (preferring a config without feature views, whose full view comes from the
    plain encoder pass), so a run of clip+abs extracts views once, not twice.
    """
    wanted = [normalise_view_config(m.view_config()) for m in methods]
    configs: list[ViewConfig] = []
    sources: list[int] = []
    for i, cfg in enumerate(wanted):
        if cfg.has_crops and cfg not in configs:
            configs.append(cfg)
            sources.append(i)
    if not configs:
        configs.append(ViewConfig())
        sources.append(0)
    full_source = next((i for i, c in enumerate(configs) if not c.feature), 0)
    assignment = [configs.index(cfg) if cfg.has_crops else full_source for cfg in wanted]
    return configs, assignment, sources


def select_subset(dataset: LabelledImages, limit: int | None) -> LabelledImages:
    """``limit`` samples spread evenly over the split (a prefix would hold only the first classes)."""
    if limit is None or limit >= len(dataset):
        return dataset
    n = len(dataset)
    picked = sorted({(i * n) // limit for i in range(limit)})
    return LabelledImages(dataset.name, [dataset.samples[i] for i in picked], dataset.classes, root=dataset.root,
                          imagenet_indices=dataset.imagenet_indices)

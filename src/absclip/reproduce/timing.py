"""Table 9: seconds per image of each stage, for CLIP and for ABS at several crop counts.

Stages are timed around the real :class:`~absclip.views.ViewExtractor` the evaluator uses, so the
numbers time the code users run, augmentations included: ``prepare`` (preprocessing, saliency, crop
sampling, the raw crops' pixels) is "crop+preprocess", ``encode`` (every encoder call) is "encoding".
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from ..attention import SaliencyPool
from ..backbones import Backbone
from ..data import create_dataset
from ..errors import InputFileError
from ..evaluate import select_subset
from ..images import image_to_tensor, iter_loaded
from ..methods import MethodOptions, create_method
from ..views import ViewExtractor
from .overrides import apply_overrides
from .planning import ReproduceConfig, resolve_root, timing_image_count
from .presets import REFERENCE_OVERRIDES, DatasetSpec, Preset, Row
from .published import Published


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_batches(extractor: ViewExtractor, batches: Sequence[Sequence[torch.Tensor]],
                  keys: Sequence[Sequence[str]]) -> tuple[float, float]:
    """Seconds spent in the extractor's two stages over ``batches``, synchronising at each boundary."""
    dev = extractor.backbone.device
    prepare = encode = 0.0
    for batch, batch_keys in zip(batches, keys, strict=True):
        t0 = time.perf_counter()
        prepared = extractor.prepare(batch, batch_keys)
        _sync(dev)
        t1 = time.perf_counter()
        extractor.encode(prepared)
        _sync(dev)
        prepare, encode = prepare + t1 - t0, encode + time.perf_counter() - t1
    return prepare, encode


@torch.inference_mode()
def measure_stage_times(backbone: Backbone, images: Sequence[torch.Tensor], crops: Sequence[int],
                        options: MethodOptions, saliency: SaliencyPool,
                        batch_size: int = 8) -> dict[str, dict[str, float]]:
    """Seconds per image of 'crop+preprocess' and 'encoding' for CLIP and for ABS at each N (``options``
    with ``abs_sampler.crops`` = N); one untimed warm-up image runs through each extractor first."""
    dev = backbone.device
    images = [im.to(dev) for im in images]
    batches = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
    keys = [[f"timing-{i + j}" for j in range(len(b))] for i, b in zip(range(0, len(images), batch_size), batches,
                                                                      strict=True)]
    runs = {"clip": create_method("clip", options)}
    for n in crops:
        runs[f"abs:N={n}"] = create_method(
            "abs", dataclasses.replace(options, abs_sampler=dataclasses.replace(options.abs_sampler, crops=n)))
    out: dict[str, dict[str, float]] = {}
    for label, method in runs.items():
        extractor = ViewExtractor.for_method(method, backbone, saliency)
        _time_batches(extractor, [batches[0][:1]], [keys[0][:1]])  # warm-up: allocator, kernels, lazy init
        pre, enc = _time_batches(extractor, batches, keys)
        out[label] = {"crop+preprocess": pre / len(images), "encoding": enc / len(images),
                      "total": (pre + enc) / len(images)}
    return out


TIMING_STAGES = ("crop+preprocess", "encoding", "total")


def run_timing(preset: Preset, cfg: ReproduceConfig, backbone: Backbone, specs: Mapping[str, DatasetSpec],
               pool: SaliencyPool, published: Published, log: Callable[[str], None]) -> dict[str, Any] | None:
    """Table 9 of ``preset`` on its timing dataset, or None (logged) when that folder is missing."""
    timing = preset.timing
    assert timing is not None
    spec = specs[timing.dataset]
    root = resolve_root(spec, cfg)
    if root is None:
        if cfg.strict:
            raise InputFileError(f"{preset.name}: timing needs {spec.key} images; no folder under {cfg.data_root}")
        log(f"{preset.name}: timing skipped: no {spec.key} folder")
        return None
    n = timing_image_count(preset, cfg)
    dataset = select_subset(create_dataset(spec.loader, root, data_dir=cfg.data_dir), n)
    images = [image_to_tensor(im) for _, im, err in iter_loaded([p for p, _ in dataset.samples])
              if err is None and im is not None]
    if not images:
        raise InputFileError(f"{spec.key}: no readable image to time under {root}")
    abs_row = next((r for r in preset.rows if r.method == "abs"), Row("ABS", "abs"))
    options = apply_overrides(MethodOptions(), {**REFERENCE_OVERRIDES, **cfg.overrides,
                                                **{k: v for k, v in abs_row.overrides.items()
                                                   if k != "abs_sampler.crops"}})
    log(f"{preset.name}: timing clip and abs (N = {', '.join(map(str, timing.crops))}) on {len(images)} images")
    times = measure_stage_times(backbone, images, timing.crops, options, pool, cfg.batch_size)
    backbone_name = cfg.backbone_name()
    pub = {m: {s: published.value(preset.table, backbone_name, spec.key, m, f"seconds_per_image:{s}")
               for s in TIMING_STAGES} for m in times}
    return {"dataset": spec.key, "images": len(images), "device": str(backbone.device), "batch_size": cfg.batch_size,
            "crops": list(timing.crops), "seconds_per_image": times, "published": pub,
            "published_note": "published times: NVIDIA RTX 4090 (the paper's GPU); not comparable across machines"}


def render_timing(timing: Mapping[str, Any]) -> str:
    """Table 9's layout: stages × (CLIP, N = ...), seconds per image, the paper's time in parentheses."""
    methods = list(timing["seconds_per_image"])
    head = ["Process step", *["CLIP" if m == "clip" else m.split(":", 1)[1] for m in methods]]
    lines = [f"## Time per image ({timing['images']} {timing['dataset']} images on {timing['device']}, "
             f"batch {timing['batch_size']})", "",
             "Seconds per image; in parentheses the paper's (RTX 4090; hardware differs, so no delta).", "",
             "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for stage in TIMING_STAGES:
        cells = []
        for m in methods:
            ours = timing["seconds_per_image"][m][stage]
            pub = timing["published"].get(m, {}).get(stage)
            cells.append(f"{ours:.4f}" + ("" if pub is None else f" ({pub:.4f})"))
        lines.append(f"| {stage[0].upper() + stage[1:]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"



"""Views of an image (DESIGN.md §2, §5): geometry, crop plans, samplers, batched raw crops against
PIL + open_clip's own transform, feature-space zoom against a slow reference, and the ViewExtractor
against per-crop loops."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from absclip.attention import Saliency, SaliencySource
from absclip.backbones import Backbone, PreprocessSpec, create_backbone
from absclip.backbones.tokens import TokenMap
from absclip.errors import InputFileError
from absclip.pixels.geometry import box_to_window, crop_extents
from absclip.pixels.resample import crop_resize
from absclip.views import (
    AbsSamplerConfig,
    CropPlan,
    RandomCropConfig,
    ViewConfig,
    ViewExtractor,
    read_plans,
    write_plans,
)
from absclip.views.features import zoom_windows
from absclip.views.samplers import (
    draw_cells,
    image_generator,
    independent_windows,
    sample_abs_plan,
    sample_random_plan,
)

S224 = PreprocessSpec(224)


SQUASH = PreprocessSpec(224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bilinear",
                        resize_mode="squash")


# ================================================================================================
# geometry: hand-computed windows
# ================================================================================================

@pytest.mark.parametrize(
    ("box", "width", "height", "grid", "expected"),
    [
        # 224×224, no resize, grid 14 -> cells of 16 px: x 0..112 -> 0/16..112/16 = 0..7
        ([0, 0, 112, 112], 224, 224, 14, [0, 0, 7, 7]),
        # whole image -> whole grid
        ([0, 0, 224, 224], 224, 224, 14, [0, 0, 14, 14]),
        # cell-aligned box: x 16..48 -> 1..3, y 32..64 -> 2..4
        ([16, 32, 48, 64], 224, 224, 14, [2, 1, 4, 3]),
        # border cells: 223/16 = 13.94 -> floor 13, 224/16 = 14
        ([223, 223, 224, 224], 224, 224, 14, [13, 13, 14, 14]),
        ([0, 0, 1, 1], 224, 224, 14, [0, 0, 1, 1]),
        # 448×224: shortest side already 224 -> resized 448×224, centre-crop offset x = (448-224)/2 = 112;
        # box x 112..336 -> (112-112)/16 .. (336-112)/16 = 0..14
        ([112, 0, 336, 224], 448, 224, 14, [0, 0, 14, 14]),
        # box fully left of the crop: x 0..50 -> (0-112)/16 = -7 .. ceil((50-112)/16) = -3 -> border column [0, 1)
        ([0, 0, 50, 224], 448, 224, 14, [0, 0, 14, 1]),
        # box fully right: x (400-112)/16 = 18 -> 13, (448-112)/16 = 21 -> 14; y 10/16 = 0.6 -> 0, 100/16 = 6.25 -> 7
        ([400, 10, 448, 100], 448, 224, 14, [0, 13, 7, 14]),
        # 1000×500: resized int(224·1000/500) = 448 × 224, scale 0.448, offset x 112;
        # x 300·0.448 - 112 = 22.4 -> 22.4/16 = 1.4 -> 1; 500·0.448 - 112 = 112 -> 7;
        # y 100·0.448 = 44.8 -> 2.8 -> 2; 300·0.448 = 134.4 -> 8.4 -> 9
        ([300, 100, 500, 300], 1000, 500, 14, [2, 1, 9, 7]),
        # 300×600 portrait: resized 224 × int(224·600/300) = 448, scale 224/300, offset y = 112;
        # y 150·224/300 - 112 = 0, 450·224/300 - 112 = 224 -> rows 0..14
        ([0, 150, 300, 450], 300, 600, 14, [0, 0, 14, 14]),
        # grid 7 (patch 32): x 100/32 = 3.1 -> 3, 130/32 = 4.06 -> 5; y 50/32 = 1.56 -> 1, 60/32 = 1.88 -> 2
        ([100, 50, 130, 60], 224, 224, 7, [1, 3, 2, 5]),
        # same box, grid 14 (patch 16): x 6.25 -> 6, 8.125 -> 9; y 3.125 -> 3, 3.75 -> 4
        ([100, 50, 130, 60], 224, 224, 14, [3, 6, 4, 9]),
        # same box, grid 16 (patch 14): x 100/14 = 7.14 -> 7, 130/14 = 9.29 -> 10; y 3.57 -> 3, 4.29 -> 5
        ([100, 50, 130, 60], 224, 224, 16, [3, 7, 5, 10]),
        # grid 7: 112/32 = 3.5 -> 4; grid 16: 112/14 = 8
        ([0, 0, 112, 112], 224, 224, 7, [0, 0, 4, 4]),
        ([0, 0, 112, 112], 224, 224, 16, [0, 0, 8, 8]),
        # grid 16 border: 210/14 = 15 -> 15, 224/14 = 16
        ([210, 0, 224, 14], 224, 224, 16, [0, 15, 1, 16]),
        # 1×1 image: resized to 224×224 -> the one pixel covers the whole grid
        ([0, 0, 1, 1], 1, 1, 14, [0, 0, 14, 14]),
        # 500×3 image: resized int(224·500/3) = 37333 × 224, offset x = round(37109/2) = 18554 (half to even);
        # x 0..250 -> 250·37333/500 - 18554 = 112.65 -> 112.65/16 = 7.04 -> ceil 8
        ([0, 0, 250, 3], 500, 3, 14, [0, 0, 14, 8]),
    ],
)
def test_box_to_window_hand_computed(box: list[int], width: int, height: int, grid: int,
                                     expected: list[int]) -> None:
    assert box_to_window(box, width, height, S224, grid) == expected


def test_box_to_window_squash() -> None:
    # squash 448×224 -> 224×224: scale x 0.5, no offset; x 112..336 -> 56..168 -> /16 = 3.5..10.5 -> 3..11
    assert box_to_window([112, 0, 336, 224], 448, 224, SQUASH, 14) == [0, 3, 14, 11]


def test_crop_extents_hand_computed() -> None:
    ext = crop_extents([(448, 224), (300, 600), (64, 32), (224, 224)], S224)
    # 448×224: x 112..336; 300×600: rows 112/(224/300) = 150 .. 336/(224/300) = 450;
    # 64×32 at S=224: resized int(224·64/32) = 448 × 224, scale 7, offset 112 -> x 16..48, y 0..32
    expected = [[112, 0, 336, 224], [0, 150, 300, 450], [16, 0, 48, 32], [0, 0, 224, 224]]
    torch.testing.assert_close(ext, torch.tensor(expected, dtype=torch.float64), atol=1e-9, rtol=0)
    torch.testing.assert_close(crop_extents([(448, 224)], SQUASH), torch.tensor([[0.0, 0, 448, 224]],
                               dtype=torch.float64))


# ================================================================================================
# plans: determinism and the JSON format
# ================================================================================================

def _peaked_saliency(cells: Sequence[tuple[int, int]], size: int = 14, high: float = 1.0,
                     low: float = 0.0) -> torch.Tensor:
    sal = torch.full((size, size), low)
    for r, c in cells:
        sal[r, c] = high
    return sal


def _random_saliency(seed: int, size: int = 14) -> torch.Tensor:
    return torch.rand(size, size, generator=torch.Generator().manual_seed(seed))


def _abs_plan(key: str, seed: int = 0, width: int = 500, height: int = 375, grid: int | None = 14,
              cfg: AbsSamplerConfig | None = None, saliency: torch.Tensor | None = None) -> CropPlan:
    sal = _random_saliency(1) if saliency is None else saliency
    return sample_abs_plan(sal, torch.tensor([0.0, 0.0, width, height]), width, height, S224, grid,
                           cfg or AbsSamplerConfig(crops=20), seed, key)


def test_plans_are_deterministic_per_seed_and_key() -> None:
    assert _abs_plan("a") == _abs_plan("a")
    assert _abs_plan("a").boxes != _abs_plan("b").boxes
    assert _abs_plan("a").boxes != _abs_plan("a", seed=1).boxes
    ind = AbsSamplerConfig(crops=20, pairing="independent")
    assert _abs_plan("a", cfg=ind) == _abs_plan("a", cfg=ind)
    assert _abs_plan("a", cfg=ind).windows != _abs_plan("b", cfg=ind).windows
    cfg = RandomCropConfig(crops=20)
    assert sample_random_plan(500, 375, S224, 14, cfg, 0, "a") == sample_random_plan(500, 375, S224, 14, cfg, 0, "a")
    assert (sample_random_plan(500, 375, S224, 14, cfg, 0, "a").boxes
            != sample_random_plan(500, 375, S224, 14, cfg, 0, "b").boxes)
    # the generator depends only on (seed, key), not on the order of calls
    a = torch.rand(5, generator=image_generator(3, "x"))
    torch.rand(100)
    assert torch.equal(a, torch.rand(5, generator=image_generator(3, "x")))


def test_plans_json_round_trip(tmp_path: Path) -> None:
    plans = [_abs_plan("img/a.jpg"), _abs_plan("b", width=31, height=700),
             sample_random_plan(64, 48, S224, 7, RandomCropConfig(crops=5), 2, "c"),
             sample_random_plan(64, 48, S224, None, RandomCropConfig(crops=5), 2, "no-grid")]
    path = tmp_path / "plans.jsonl"
    write_plans(path, plans)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 4
    first = json.loads(lines[0])
    assert first["format"] == "absclip.plan" and first["version"] == 1 and first["sampler"] == "abs"
    back = read_plans(path)
    assert list(back) == ["img/a.jpg", "b", "c", "no-grid"]
    assert list(back.values()) == plans


def _plan_record(**changes: object) -> dict[str, object]:
    record = CropPlan("k", 100, 50, 14, 0, "abs", [[0, 0, 100, 50], [10, 5, 20, 6]],
                      [[0, 0, 14, 14], [3, 1, 4, 2]]).to_json()
    record.update(changes)
    return record


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"boxes": [[0, 0, 101, 50], [0, 0, 1, 1]]}, "outside a 100×50 image"),  # x1 > W
        ({"boxes": [[0, 0, 10, 10], [5, 5, 5, 9]]}, "outside a 100×50 image"),  # empty box
        ({"boxes": [[-1, 0, 10, 10], [0, 0, 1, 1]]}, "outside a 100×50 image"),
        ({"windows": [[0, 0, 15, 14], [0, 0, 1, 1]]}, "outside a 14×14 token grid"),
        ({"windows": [[0, 0, 14, 14], [2, 2, 2, 3]]}, "outside a 14×14 token grid"),
        ({"version": 2}, "not an absclip.plan version 1 record"),
        ({"format": "other"}, "not an absclip.plan version 1 record"),
    ],
)
def test_invalid_plans_name_file_and_line(tmp_path: Path, changes: dict[str, object], message: str) -> None:
    path = tmp_path / "plans.jsonl"
    good = json.dumps(_plan_record(image="good"))
    path.write_text(good + "\n\n" + json.dumps(_plan_record(image="bad", **changes)) + "\n", encoding="utf-8")
    with pytest.raises(InputFileError, match=message) as info:
        read_plans(path)
    assert f"{path}:3:" in str(info.value)  # line 3: the blank line 2 still counts


def test_unreadable_plan_files(tmp_path: Path) -> None:
    path = tmp_path / "plans.jsonl"
    record = _plan_record()
    del record["windows"]
    path.write_text(json.dumps(record) + "\n", encoding="utf-8")
    with pytest.raises(InputFileError, match=re.escape(f"{path}:1: plan record lacks 'windows'")):
        read_plans(path)
    path.write_text(json.dumps(_plan_record()) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(InputFileError, match=re.escape(f"{path}:2: not valid JSON")):
        read_plans(path)
    with pytest.raises(InputFileError, match="plan file not found"):
        read_plans(tmp_path / "missing.jsonl")


# ================================================================================================
# samplers
# ================================================================================================

def _chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


def test_draw_cells_top_k_and_softmax_frequencies() -> None:
    g = torch.Generator().manual_seed(0)
    top = torch.randperm(196, generator=g)[:20]
    sal = torch.full((196,), 0.45)
    values = 0.5 + 0.003 * torch.arange(20, dtype=torch.float64)  # logits / 0.03 step by 0.1
    sal[top] = values.float()
    draws = 20000
    cells = draw_cells(sal.view(14, 14), draws, top_k=20, temperature=0.03, informative=True,
                       gen=image_generator(0, "cells"))
    assert cells.shape == (draws,)
    # all draws in the top-20 set (the 176 others at 0.45 would take ~35% of the mass without top-k)
    assert set(cells.tolist()) <= set(top.tolist())
    counts = torch.stack([(cells == c).sum() for c in top]).double()
    probs = torch.softmax(sal[top].double() / 0.03, dim=0)
    chi2 = _chi_square(counts, probs)
    assert chi2 < 60, chi2  # 19 degrees of freedom: mean 19, sd 6.2
    # the temperature matters: the same counts are far from softmax(A / 0.3) and from uniform
    assert _chi_square(counts, torch.softmax(sal[top].double() / 0.3, dim=0)) > 500
    assert _chi_square(counts, torch.full((20,), 0.05, dtype=torch.float64)) > 500


def test_draw_cells_top_k_truncates_ties_and_small_k() -> None:
    sal = _peaked_saliency([(3, 4), (10, 2)], high=1.0, low=0.0)
    cells = draw_cells(sal, 500, top_k=2, temperature=0.03, informative=True, gen=image_generator(0, "k"))
    assert set(cells.tolist()) == {3 * 14 + 4, 10 * 14 + 2}
    cells = draw_cells(sal, 500, top_k=1, temperature=0.03, informative=True, gen=image_generator(0, "k"))
    assert set(cells.tolist()) <= {3 * 14 + 4, 10 * 14 + 2} and len(set(cells.tolist())) == 1


def test_uninformative_saliency_draws_uniformly() -> None:
    draws = 19600
    cells = draw_cells(torch.ones(14, 14), draws, top_k=20, temperature=0.03, informative=False,
                       gen=image_generator(0, "uniform"))
    counts = torch.bincount(cells, minlength=196).double()
    assert (counts > 0).all()  # every cell, not just 20
    chi2 = _chi_square(counts, torch.full((196,), 1 / 196, dtype=torch.float64))
    assert chi2 < 320, chi2  # 195 degrees of freedom: mean 195, sd 19.7


def test_abs_box_sizes_unclipped() -> None:
    # one salient cell (7, 7): centre x = 7.5/14·1000 = 535.7, y = 7.5/14·600 = 321.4. Widths
    # ⌊0.6·1000⌋..⌊0.9·1000⌋ = 600..900 and heights 360..540 never reach the border from there.
    w, h = 1000, 600
    cfg = AbsSamplerConfig(crops=3000, top_k=1)
    plan = _abs_plan("sizes", width=w, height=h, cfg=cfg, saliency=_peaked_saliency([(7, 7)]))
    boxes = torch.tensor(plan.boxes)
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert boxes[:, 0].min() > 0 and boxes[:, 2].max() < w and boxes[:, 1].min() > 0 and boxes[:, 3].max() < h
    assert bw.min() >= 600 and bw.max() <= 900 and bh.min() >= 360 and bh.max() <= 540
    assert bw.min() <= 605 and bw.max() >= 895 and bh.min() <= 365 and bh.max() >= 535  # the range is used
    assert abs(bw.double().mean().item() - 750) < 6 and abs(bh.double().mean().item() - 450) < 4  # uniform
    cx, cy = 7.5 / 14 * w, 7.5 / 14 * h
    assert ((boxes[:, 0] + boxes[:, 2]) / 2 - cx).abs().max() <= 1.0
    assert ((boxes[:, 1] + boxes[:, 3]) / 2 - cy).abs().max() <= 1.0
    # paired windows are the boxes' windows
    assert plan.windows == [box_to_window(b, w, h, S224, 14) for b in plan.boxes]


def test_abs_boxes_clipped_at_the_corner() -> None:
    # top-left cell: centre (0.5/14·1000, 0.5/14·600) = (35.7, 21.4). Unclipped x1 = ⌊cx - bw/2⌋ + bw
    # = ⌊cx + bw/2⌋ for integer bw in 600..900 -> 335..485; y1 = ⌊cy + bh/2⌋ for bh in 360..540 -> 201..291.
    cfg = AbsSamplerConfig(crops=2000, top_k=1)
    plan = _abs_plan("corner", width=1000, height=600, cfg=cfg, saliency=_peaked_saliency([(0, 0)]))
    boxes = torch.tensor(plan.boxes)
    assert (boxes[:, 0] == 0).all() and (boxes[:, 1] == 0).all()
    assert boxes[:, 2].min() >= 335 and boxes[:, 2].max() <= 485
    assert boxes[:, 3].min() >= 201 and boxes[:, 3].max() <= 291
    assert boxes[:, 2].min() <= 340 and boxes[:, 2].max() >= 480


def test_abs_boxes_follow_the_saliency_extent() -> None:
    # a 4×4 grid over the region x 100..300 of a 400×200 image; cell (0, 0) centre = (100 + 0.5·50, 0.5·50)
    # = (125, 25); ratio (0.1, 0.1): bw = ⌊0.1·400⌋ = 40, bh = 20 -> [125 - 20, 25 - 10, 145, 35]
    sal = torch.zeros(4, 4)
    sal[0, 0] = 1.0
    plan = sample_abs_plan(sal, torch.tensor([100.0, 0.0, 300.0, 200.0]), 400, 200, S224, 14,
                           AbsSamplerConfig(crops=5, top_k=1, ratio=(0.1, 0.1)), 0, "extent")
    assert plan.boxes == [[105, 15, 145, 35]] * 5


@pytest.mark.parametrize(("width", "height"), [(1, 1), (3, 500), (500, 3), (2, 2), (1, 1000), (4000, 7), (7, 7)])
def test_samplers_on_tiny_and_extreme_images(width: int, height: int) -> None:
    for pairing in ("paired", "independent"):
        cfg = AbsSamplerConfig(crops=40, pairing=pairing)
        plan = _abs_plan(f"{width}x{height}", width=width, height=height, cfg=cfg)
        assert len(plan.boxes) == 40 and len(plan.windows) == 40
        plan.validate()  # 0 <= x0 < x1 <= W, 0 <= y0 < y1 <= H, windows inside the grid
        for x0, y0, x1, y1 in plan.boxes:
            assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
    plan = sample_random_plan(width, height, S224, 14, RandomCropConfig(crops=40), 0, "r")
    plan.validate()
    for x0, y0, x1, y1 in plan.boxes:
        assert x1 - x0 == y1 - y0 >= 1
    # and those boxes really cut out of the image
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    pixels = crop_resize(image, torch.tensor(plan.boxes[:4]), S224)
    assert pixels.shape == (4, 3, 224, 224) and torch.isfinite(pixels).all()


def test_independent_windows_are_odd_squares() -> None:
    # grid 14, ratio (0.6, 0.9): s in ⌊8.4⌋..⌊12.6⌋ = 8..12, half = s // 2 in 4..6, width 2·half + 1 in {9, 11, 13}.
    # One dominant centre cell (7, 7) (other 19 of the top-20 at 0): rows [7 - half, 7 + half + 1) fit in 0..14.
    sal = _peaked_saliency([(7, 7)], high=1.0, low=0.0)
    cfg = AbsSamplerConfig(crops=600)
    windows = torch.tensor(independent_windows(sal, 14, cfg, True, image_generator(0, "ind")))
    heights, widths = windows[:, 2] - windows[:, 0], windows[:, 3] - windows[:, 1]
    assert torch.equal(heights, widths)
    assert set(widths.tolist()) == {9, 11, 13}
    assert torch.equal(windows[:, 0] + heights // 2, torch.full_like(heights, 7))  # centred on row 7
    # random centres: clipped at the border only, never wider than 13, odd when not clipped
    windows = torch.tensor(independent_windows(_random_saliency(3), 14, cfg, True, image_generator(0, "r")))
    assert (windows[:, :2] >= 0).all() and (windows[:, 2:] <= 14).all()
    for r0, c0, r1, c1 in windows.tolist():
        for lo, hi in ((r0, r1), (c0, c1)):
            assert 1 <= hi - lo <= 13
            if lo > 0 and hi < 14:
                assert hi - lo in (9, 11, 13)


def test_independent_windows_always_use_top_20() -> None:
    # cfg.top_k = 1 restricts the raw boxes to one cell, but the reference's feature windows draw from the
    # top 20. Small ratio (0.1, 0.2) on grid 14: s in 1..2, half in {0, 1}, windows 1 or 3 wide.
    cells = [(r, c) for r in range(3, 11, 2) for c in range(2, 12, 2)]  # 4 × 5 = 20 cells, equal saliency
    sal = _peaked_saliency(cells, high=1.0, low=0.0)
    cfg = AbsSamplerConfig(crops=400, top_k=1, ratio=(0.1, 0.2), pairing="independent")
    plan = _abs_plan("top20", width=140, height=140, cfg=cfg, saliency=sal)
    box_centres = {((x0 + x1) // 20, (y0 + y1) // 20) for x0, y0, x1, y1 in plan.boxes}
    assert len(box_centres) == 1
    windows = torch.tensor(plan.windows)
    sizes = windows[:, 2:] - windows[:, :2]
    assert set(sizes.flatten().tolist()) <= {1, 3} and torch.equal(sizes[:, 0], sizes[:, 1])
    centres = {(r0 + (r1 - r0) // 2, c0 + (c1 - c0) // 2) for r0, c0, r1, c1 in plan.windows}
    assert centres <= set(cells) and len(centres) >= 15


def test_independent_windows_map_the_saliency_grid_onto_the_token_grid() -> None:
    # saliency cell (13, 0) of 14 -> token grid 7: row ⌊13.5·7/14⌋ = 6, column ⌊0.5·7/14⌋ = 0;
    # ratio (0.3, 0.3) -> s = ⌊2.1⌋ = 2, half 1 -> rows [5, 8) clipped to [5, 7), columns [-1, 2) -> [0, 2)
    sal = _peaked_saliency([(13, 0)], high=1.0, low=0.0)
    cfg = AbsSamplerConfig(crops=5, ratio=(0.3, 0.3))
    assert independent_windows(sal, 7, cfg, True, image_generator(0, "m")) == [[5, 0, 7, 2]] * 5


@pytest.mark.parametrize(("width", "height", "alpha"), [(500, 375, 0.1), (375, 500, 0.5), (1000, 90, 0.3)])
def test_random_crops_are_squares_of_the_configured_sides(width: int, height: int, alpha: float) -> None:
    short = min(width, height)
    plan = sample_random_plan(width, height, S224, 14, RandomCropConfig(crops=3000, alpha=alpha), 0, "r")
    boxes = torch.tensor(plan.boxes)
    sides = boxes[:, 2] - boxes[:, 0]
    assert torch.equal(sides, boxes[:, 3] - boxes[:, 1])
    lo, hi = math.floor(alpha * short), math.floor(0.9 * short)
    assert sides.min() >= lo and sides.max() <= hi
    assert sides.min() <= lo + 0.02 * short and sides.max() >= hi - 0.02 * short
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= width).all()
    assert (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= height).all()
    # positions uniform over the free range
    free_x = (width - sides).double()
    rel = boxes[:, 0].double()[free_x > 20] / free_x[free_x > 20]
    assert abs(rel.mean().item() - 0.5) < 0.03 and rel.min() < 0.02 and rel.max() > 0.98
    assert plan.windows == [box_to_window(b, width, height, S224, 14) for b in plan.boxes]


# ================================================================================================
# raw crops against PIL + open_clip's own transform
# ================================================================================================

def _image(height: int, width: int, kind: str, seed: int = 0) -> np.ndarray:
    g = np.random.default_rng(seed)
    if kind == "random":
        return g.integers(0, 256, (height, width, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    smooth = np.stack([127 + 120 * np.sin(xx / 7 + yy / 11), 127 + 120 * np.cos(yy / 5 - xx / 23),
                       (xx * 3 + yy) % 256], axis=-1)  # the third channel has hard 255 -> 0 edges
    return smooth.round().clip(0, 255).astype(np.uint8)


def _boxes(height: int, width: int, seed: int, n: int = 5) -> list[list[int]]:
    g = np.random.default_rng(seed + 100)
    boxes = [[0, 0, width, height]]
    for _ in range(n):
        x0 = int(g.integers(0, width))
        y0 = int(g.integers(0, height))
        boxes.append([x0, y0, int(g.integers(x0 + 1, width + 1)), int(g.integers(y0 + 1, height + 1))])
    # a 1×1 crop, a tall thin one (height shrinks > 2× the width: Pillow's vertical-first order), a small
    # one that is upsampled
    boxes.append([width // 2, height // 2, width // 2 + 1, height // 2 + 1])
    if height >= 3 and width >= 2:
        boxes.append([0, 0, max(1, width // 3), height])
    return boxes


def _max_pixel_diff(ours: torch.Tensor, ref: torch.Tensor, spec: PreprocessSpec) -> float:
    """Largest difference in 8-bit units of two normalised batches [N, 3, S, S]."""
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    return float(((ours - ref) * std * 255.0).abs().max())


# (height, width). The full box of 653×294 is resized to 224×497: its height shrinks more than twice as much
# as its width, so Pillow runs the vertical pass first (the edges of the "smooth" image's third channel
# then differ by up to 13/255 from a horizontal-first resize).
RAW_CASES = [(1, 1), (3, 500), (500, 3), (375, 500), (653, 294), (30, 40), (224, 224), (7, 300)]


@pytest.mark.parametrize(("height", "width"), RAW_CASES)
@pytest.mark.parametrize("kind", ["random", "smooth"])
def test_crop_resize_matches_pil_and_open_clip_transform(height: int, width: int, kind: str) -> None:
    arr = _image(height, width, kind, seed=height * 1000 + width)
    img = Image.fromarray(arr)
    image = torch.from_numpy(arr).permute(2, 0, 1)
    transform = open_clip.transform.image_transform(224, is_train=False, mean=S224.mean, std=S224.std,
                                                    resize_mode="shortest", interpolation="bicubic")
    boxes = _boxes(height, width, seed=height + width)
    ours = crop_resize(image, torch.tensor(boxes), S224)
    ref = torch.stack([transform(img.crop(tuple(b))) for b in boxes])
    assert ours.shape == ref.shape == (len(boxes), 3, 224, 224)
    diff = _max_pixel_diff(ours, ref, S224)
    assert diff <= 1.01, (boxes, diff)
    # a float image in 0..255 gives the same as uint8
    torch.testing.assert_close(crop_resize(image.float(), torch.tensor(boxes[:2]), S224), ours[:2])


@pytest.mark.parametrize(("height", "width"), [(1, 1), (3, 500), (375, 500), (600, 300), (20, 30)])
def test_crop_resize_squash_matches_pil_bilinear(height: int, width: int) -> None:
    arr = _image(height, width, "smooth", seed=1)
    img = Image.fromarray(arr)
    image = torch.from_numpy(arr).permute(2, 0, 1)
    boxes = _boxes(height, width, seed=7)
    ours = crop_resize(image, torch.tensor(boxes), SQUASH)
    ref = []
    for b in boxes:
        resized = np.asarray(img.crop(tuple(b)).resize((224, 224), Image.Resampling.BILINEAR), dtype=np.float32)
        ref.append((torch.from_numpy(resized).permute(2, 0, 1) / 255.0 - 0.5) / 0.5)
    diff = _max_pixel_diff(ours, torch.stack(ref), SQUASH)
    assert diff <= 1.01, diff


def test_crop_resize_pixel_difference_summary() -> None:
    """Max difference over many random boxes of random and smooth images (reported by the test run)."""
    worst = 0.0
    transform = open_clip.transform.image_transform(224, is_train=False, mean=S224.mean, std=S224.std,
                                                    resize_mode="shortest", interpolation="bicubic")
    g = np.random.default_rng(5)
    for i in range(6):
        height, width = int(g.integers(5, 420)), int(g.integers(5, 420))
        arr = _image(height, width, "smooth" if i % 2 else "random", seed=i)
        img = Image.fromarray(arr)
        boxes = _boxes(height, width, seed=50 + i, n=4)
        ours = crop_resize(torch.from_numpy(arr).permute(2, 0, 1), torch.tensor(boxes), S224)
        ref = torch.stack([transform(img.crop(tuple(b))) for b in boxes])
        worst = max(worst, _max_pixel_diff(ours, ref, S224))
    assert worst <= 1.01, worst


# ================================================================================================
# feature-space zoom against a slow per-window F.interpolate
# ================================================================================================

def _slow_zoom(tokens: torch.Tensor, window: Sequence[int], prefix: int = 1,
               shape: tuple[int, int] | None = None) -> torch.Tensor:
    """tokens [P + H·W, C] -> [P + H·W, C] with the window resized to H×W (bicubic, align_corners=False),
    one F.interpolate per window; the P prefix tokens unchanged."""
    width = tokens.shape[1]
    h, w = shape or (4, 4)
    r0, c0, r1, c1 = window
    patch = tokens[prefix:].view(h, w, width)[r0:r1, c0:c1]  # [h', w', C]
    zoomed = F.interpolate(patch.permute(2, 0, 1)[None], size=(h, w), mode="bicubic",
                           align_corners=False)[0]  # [C, H, W]
    return torch.cat([tokens[:prefix], zoomed.permute(1, 2, 0).reshape(h * w, width)])


def _random_windows(grid: int, n: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    out = [[0, 0, grid, grid], [0, 0, 1, 1], [grid - 1, grid - 1, grid, grid], [0, grid - 1, grid, grid],
           [grid // 2, 0, grid // 2 + 1, grid]]
    while len(out) < n:
        r0, c0 = (int(v) for v in torch.randint(0, grid, (2,), generator=g))
        r1 = int(torch.randint(r0 + 1, grid + 1, (1,), generator=g))
        c1 = int(torch.randint(c0 + 1, grid + 1, (1,), generator=g))
        out.append([r0, c0, r1, c1])
    return out


@pytest.mark.parametrize(("shape", "prefix"), [((4, 4), 1), ((7, 7), 0), ((14, 14), 1), ((5, 8), 4)],
                         ids=["4x4-cls", "7x7-siglip", "14x14-cls", "5x8-registers"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_zoom_windows_matches_slow_interpolate(shape: tuple[int, int], prefix: int, dtype: torch.dtype) -> None:
    h, w = shape
    g = torch.Generator().manual_seed(h * w)
    b, width = 3, 8
    tokens = torch.randn(b, prefix + h * w, width, generator=g, dtype=dtype)
    windows = [win for win in _random_windows(max(h, w), 40, seed=h) if win[2] <= h and win[3] <= w][:24]
    windows[0] = [0, 0, h, w]
    owner = torch.randint(0, b, (len(windows),), generator=g)
    fast = zoom_windows(TokenMap.from_sequence(tokens, prefix, shape), owner, torch.tensor(windows))
    assert fast.grid_shape == shape and fast.num_prefix == prefix and fast.grid.dtype == dtype
    seq = fast.sequence()
    slow = torch.stack([_slow_zoom(tokens[i], win, prefix, shape) for i, win in zip(owner.tolist(), windows,
                                                                                   strict=True)])
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(seq, slow, atol=tol, rtol=0)
    # the full-grid window is the identity; prefix tokens are the owners' own
    torch.testing.assert_close(seq[0], tokens[owner[0]], atol=tol, rtol=0)
    assert torch.equal(fast.prefix, tokens[owner, :prefix])
    # a 1×1 window fills the grid with that one token
    one = next(i for i, win in enumerate(windows) if win[2] - win[0] == 1 and win[3] - win[1] == 1)
    r0, c0 = windows[one][:2]
    cell = tokens[owner[one], prefix + r0 * w + c0]
    torch.testing.assert_close(fast.grid[one], cell.expand(h, w, width), atol=tol, rtol=0)


# ================================================================================================
# ViewExtractor against per-crop / per-window loops on a tiny model
# ================================================================================================

class _FixedSaliency(SaliencySource):
    """A peaked map per image; counts its calls."""

    name = "fixed"

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, images: Sequence[torch.Tensor]) -> Saliency:
        self.calls += 1
        maps = torch.stack([_random_saliency(int(im.shape[1]) * 7 + int(im.shape[2])) for im in images])
        extents = torch.tensor([[0.0, 0.0, float(im.shape[2]), float(im.shape[1])] for im in images])
        return Saliency(maps, extents)


@pytest.fixture(scope="module")
def tiny(tiny_open_clip_checkpoint: tuple[str, Path]) -> Backbone:
    name, path = tiny_open_clip_checkpoint
    return create_backbone(f"open_clip:{name}", pretrained=str(path), device="cpu")


def _images() -> list[torch.Tensor]:
    return [torch.from_numpy(_image(h, w, kind, seed=h + w)).permute(2, 0, 1)
            for h, w, kind in ((40, 60, "random"), (70, 33, "smooth"), (32, 32, "random"))]


KEYS = ["a.jpg", "b.jpg", "c.jpg"]


def _tiny_transform(bb: Backbone):  # -> a torchvision Compose
    spec = bb.preprocess
    return open_clip.transform.image_transform(spec.size, is_train=False, mean=spec.mean, std=spec.std,
                                               resize_mode="shortest", interpolation="bicubic")


@pytest.mark.parametrize("layer", [0, 1, -1])
@pytest.mark.parametrize("pairing", ["paired", "independent"])
def test_feature_views_equal_slow_per_window_loop(tiny: Backbone, layer: int, pairing: str) -> None:
    bb = tiny
    cfg = ViewConfig(crops="abs", raw=False, feature=True, feature_layer=layer, micro_batch=5,
                     abs=AbsSamplerConfig(crops=7, pairing=pairing))
    images = _images()
    views, plans = ViewExtractor(bb, cfg, _FixedSaliency())(images, KEYS)
    assert views.raw is None and views.feature is not None
    assert views.feature.shape == (3, 7, bb.embed_dim)
    grid = bb.grid_size
    assert grid == 4
    for i, (image, plan) in enumerate(zip(images, plans, strict=True)):
        pixels = crop_resize(image, torch.tensor([[0, 0, image.shape[2], image.shape[1]]]), bb.preprocess)
        torch.testing.assert_close(views.full[i], bb.encode_image(pixels)[0], atol=1e-5, rtol=0)
        tokens = bb.tokens_before_block(pixels, layer).sequence()[0]
        for n, window in enumerate(plan.windows):
            r0, c0, r1, c1 = window
            assert 0 <= r0 < r1 <= grid and 0 <= c0 < c1 <= grid
            zoomed = TokenMap.from_sequence(_slow_zoom(tokens, window)[None], 1, (grid, grid))
            slow = bb.finish_from_block(zoomed, layer)[0]
            torch.testing.assert_close(views.feature[i, n], slow, atol=1e-5, rtol=0)
    # distinct windows give distinct embeddings (the windows are used at all)
    flat = views.feature.reshape(-1, bb.embed_dim)
    windows = [tuple(w) for p in plans for w in p.windows]
    if len(set(windows)) > 1:
        assert (flat[:, None] - flat[None]).abs().amax(-1).max() > 1e-3
    assert torch.equal(views.crops(), views.feature)


def test_raw_views_equal_per_crop_encoding(tiny: Backbone) -> None:
    bb = tiny
    cfg = ViewConfig(crops="abs", raw=True, feature=True, micro_batch=4, abs=AbsSamplerConfig(crops=6))
    images = _images()
    saliency = _FixedSaliency()
    views, plans = ViewExtractor(bb, cfg, saliency)(images, KEYS)
    assert saliency.calls == 1  # one saliency pass for the batch
    assert views.raw is not None and views.raw.shape == (3, 6, bb.embed_dim)
    transform = _tiny_transform(bb)
    for i, (image, plan) in enumerate(zip(images, plans, strict=True)):
        pil = Image.fromarray(image.permute(1, 2, 0).numpy())
        for n, box in enumerate(plan.boxes):
            one = bb.encode_image(crop_resize(image, torch.tensor([box]), bb.preprocess))[0]
            torch.testing.assert_close(views.raw[i, n], one, atol=1e-5, rtol=0)
            # open_clip's own preprocessing of the PIL crop gives the same pixels (to 1/255), so the same view
            pixels = transform(pil.crop(tuple(box)))[None]
            assert _max_pixel_diff(crop_resize(image, torch.tensor([box]), bb.preprocess), pixels,
                                   bb.preprocess) <= 1.01
            torch.testing.assert_close(views.raw[i, n], bb.encode_image(pixels)[0], atol=2e-3, rtol=0)
        full = transform(pil)[None]
        torch.testing.assert_close(views.full[i], bb.encode_image(full)[0], atol=2e-3, rtol=0)
    torch.testing.assert_close(views.crops(), torch.cat([views.raw, views.feature], dim=1))


def test_micro_batch_and_supplied_plans_reproduce_views(tiny: Backbone, tmp_path: Path) -> None:
    bb = tiny
    images = _images()
    base = ViewConfig(crops="abs", raw=True, feature=True, abs=AbsSamplerConfig(crops=9))
    one, plans = ViewExtractor(bb, ViewConfig(**{**base.__dict__, "micro_batch": 1}), _FixedSaliency())(images, KEYS)
    many, plans32 = ViewExtractor(bb, ViewConfig(**{**base.__dict__, "micro_batch": 32}), _FixedSaliency())(
        images, KEYS)
    assert plans == plans32
    for a, b in ((one.full, many.full), (one.raw, many.raw), (one.feature, many.feature)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    # plans written, read back and supplied: no saliency pass, the same embeddings
    path = tmp_path / "plans.jsonl"
    write_plans(path, plans)
    supplied = [read_plans(path)[k] for k in KEYS]
    saliency = _FixedSaliency()
    again, used = ViewExtractor(bb, ViewConfig(**{**base.__dict__, "micro_batch": 32}), saliency)(
        images, KEYS, plans=supplied)
    assert saliency.calls == 0 and used == plans
    for a, b in ((again.full, many.full), (again.raw, many.raw), (again.feature, many.feature)):
        assert torch.equal(a, b)
    # a batch of one image gives that image's plan and views (plans do not depend on the batch)
    single, single_plans = ViewExtractor(bb, base, _FixedSaliency())(images[1:2], KEYS[1:2])
    assert single_plans == plans[1:2]
    torch.testing.assert_close(single.raw[0], many.raw[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(single.feature[0], many.feature[1], atol=1e-5, rtol=0)


def test_random_crop_views_and_plan_checks(tiny: Backbone) -> None:
    bb = tiny
    images = _images()
    cfg = ViewConfig(crops="random", raw=True, feature=True, random=RandomCropConfig(crops=5), micro_batch=3)
    views, plans = ViewExtractor(bb, cfg)(images, KEYS)
    assert [p.sampler for p in plans] == ["random"] * 3
    for i, (image, plan) in enumerate(zip(images, plans, strict=True)):
        crops = bb.encode_image(crop_resize(image, torch.tensor(plan.boxes), bb.preprocess))
        torch.testing.assert_close(views.raw[i], crops, atol=1e-5, rtol=0)
    # no crops: the full view only
    full_only, none = ViewExtractor(bb, ViewConfig())(images, KEYS)
    assert none == [] and full_only.raw is None and full_only.feature is None
    torch.testing.assert_close(full_only.full, views.full, atol=1e-5, rtol=0)
    assert full_only.crops().shape == (3, 1, bb.embed_dim)
    # plans for another image size are refused
    wrong = [CropPlan(p.image, p.width + 1, p.height, p.grid, p.seed, p.sampler, p.boxes, p.windows) for p in plans]
    with pytest.raises(InputFileError, match=r"plan for a\.jpg is for a 61×40 image, the image is 60×40"):
        ViewExtractor(bb, cfg)(images, KEYS, plans=wrong)


def test_crop_resize_chunks_large_images(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunking over boxes (which bounds memory on huge images) gives exactly the unchunked result."""
    import absclip.pixels.resample as resample

    image = torch.randint(0, 256, (3, 90, 120), dtype=torch.uint8, generator=torch.Generator().manual_seed(9))
    boxes = torch.tensor([[0, 0, 120, 90], [10, 5, 70, 80], [30, 20, 119, 89], [0, 40, 60, 90], [5, 5, 6, 6]])
    whole = resample.crop_resize(image, boxes, S224)
    per_box = 8 * 224 * (3 * 120 + 90 + 120)
    monkeypatch.setattr(resample, "WORKSPACE_BYTES", 2 * per_box)  # chunks of 2 boxes
    assert torch.equal(resample.crop_resize(image, boxes, S224), whole)


@pytest.mark.parametrize("prefix", [0, 1, 3], ids=["siglip", "cls", "cls+registers"])
def test_feature_augments_on_token_maps(prefix: int) -> None:
    """Table 5's feature augments edit only the grid, for any number of prefix tokens; the attention bias
    is laid out as ``TokenMap.sequence()`` (prefix first, 0 there)."""
    from absclip.views.augment import ATTENTION_BONUS, FEATURE_AUGMENTS, HIGHLIGHT_GAIN

    g = torch.Generator().manual_seed(prefix)
    h, w, c = 3, 5, 4
    tokens = TokenMap(torch.randn(2, prefix, c, generator=g), torch.randn(2, h, w, c, generator=g))
    owner = torch.tensor([1, 0])
    windows = torch.tensor([[1, 1, 3, 4], [0, 0, 3, 5]])
    for name in ("mask", "highlight-fea", "highlight-attn", "crop"):
        out, bias = FEATURE_AUGMENTS.get(name)(tokens, owner, windows)
        assert out.grid_shape == (h, w) and torch.equal(out.prefix, tokens.prefix[owner]), name
        if name == "mask":
            expected = torch.zeros(h, w, c)
            expected[1:3, 1:4] = tokens.grid[1, 1:3, 1:4]
            assert bias is None and torch.equal(out.grid[0], expected) and torch.equal(out.grid[1], tokens.grid[0])
        elif name == "highlight-fea":
            expected = tokens.grid[1].clone()
            expected[1:3, 1:4] *= HIGHLIGHT_GAIN
            assert bias is None and torch.allclose(out.grid[0], expected)
        elif name == "highlight-attn":
            assert torch.equal(out.grid, tokens.grid[owner]) and bias is not None
            assert bias.shape == (2, prefix + h * w) and not bias[:, :prefix].any()
            cells = bias[0, prefix:].view(h, w)
            assert torch.allclose(cells[1:3, 1:4], torch.tensor(ATTENTION_BONUS)) and cells[0].abs().sum() == 0
            assert torch.allclose(bias[1, prefix:], torch.tensor(ATTENTION_BONUS))
        else:
            assert bias is None and torch.allclose(out.grid[1], tokens.grid[0], atol=1e-6)  # full window

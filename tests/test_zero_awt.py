"""ZERO and AWT: every formula against a loop-by-loop re-derivation, the invariants (one view: ZERO is
CLIP's argmax, AWT is CLIP), the random resized crop + flip views against torchvision's algorithm and
Pillow, and end-to-end ``absclip eval`` / ``classify`` runs with the tiny test model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import absclip.cli as cli
import absclip.methods.zero  # noqa: F401  (registers zero, zero+mce, zero+abs)
from absclip.errors import ConfigError
from absclip.methods import MethodOptions, create_method
from absclip.methods.awt import awt_texts  # registers awt, awt+mce, awt+abs
from absclip.pixels.spec import PreprocessSpec
from absclip.text import ClassList, resolve_descriptions
from absclip.transport import awt_logits, replaced_entropy, sinkhorn
from absclip.views import ViewConfig, ViewExtractor
from absclip.views.resized import (
    ATTEMPTS,
    ResizedCropConfig,
    boxes_from_draws,
    flip_flags,
    raw_resize_flip,
    sample_resized_plan,
)
from absclip.voting import kept_views, zero_logits
from tiny_folders import write_folder_dataset

CLASSES = ["cat", "dog", "bird"]
VARIANTS = ["zero", "zero+mce", "zero+abs", "awt", "awt+mce", "awt+abs"]


# ---- ZERO -----------------------------------------------------------------------------------------
def _zero_loop(logits: list[list[float]], fraction: float) -> list[float]:
    """The vote of one image, view by view and class by class (voting.py's docstring, plain Python)."""
    views, classes = len(logits), len(logits[0])
    keep = min(views, max(1, math.floor(views * fraction + 1e-9)))

    def probabilities(row: list[float]) -> list[float]:
        top = max(row)
        e = [math.exp(x - top) for x in row]
        return [x / sum(e) for x in e]

    def argmax(row: list[float]) -> int:
        return max(range(len(row)), key=lambda c: (row[c], -c))

    entropy = [-sum(p * math.log(p) for p in probabilities(row) if p > 0) for row in logits]
    kept = sorted(range(views), key=lambda v: (entropy[v], v))[:keep]
    votes = [0.0] * classes
    for v in kept:
        votes[argmax(logits[v])] += 1
    ties = [c for c in range(classes) if votes[c] == max(votes)]
    if len(ties) > 1:
        winner = next((argmax(logits[v]) for v in range(keep, views) if argmax(logits[v]) in ties), None)
        if winner is None:
            row = logits[min(keep, views - 1)]
            winner = max(ties, key=lambda c: (row[c], -c))
        votes[winner] += 1
    mean = [sum(probabilities(row)[c] for row in logits) / views for c in range(classes)]
    return [votes[c] + 0.5 * mean[c] for c in range(classes)]


@pytest.mark.parametrize("fraction", [0.1, 0.25, 1 / 3, 0.5, 1.0])
def test_zero_logits_match_a_plain_loop(fraction: float) -> None:
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(7, 12, 3, generator=gen) * torch.rand(7, 12, 1, generator=gen) * 6  # few classes: ties
    got = zero_logits(logits, fraction)
    expected = torch.tensor([_zero_loop(image.tolist(), fraction) for image in logits])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert (got.argmax(1) == expected.argmax(1)).all()


def test_zero_ties_go_to_the_first_later_view_then_to_the_fallback_view() -> None:
    # 5 views, γ = 0.4: the two sharpest views (0 and 1) vote 0 and 1; view 2 votes 2 (no tie class),
    # view 3 votes 1 -> class 1 wins the tie with 2 + 1 votes
    logits = torch.tensor([[[9.0, 0, 0], [0, 9, 0], [0, 0, 1], [0, 1, 0], [1, 0, 0]]])
    assert kept_views(5, 0.4) == 2
    votes = zero_logits(logits, 0.4).floor()
    assert votes.tolist() == [[1.0, 2.0, 0.0]]
    # no later view votes for a tied class: the tied class with the larger logit on view k = 2 wins
    logits = torch.tensor([[[9.0, 0, 0], [0, 9, 0], [0, 0.5, 1]]])
    assert zero_logits(logits, 2 / 3).floor().tolist() == [[1.0, 2.0, 0.0]]


def test_zero_with_one_view_is_the_argmax() -> None:
    logits = torch.randn(20, 1, 6, generator=torch.Generator().manual_seed(0))
    for fraction in (0.1, 1.0):
        got = zero_logits(logits, fraction)
        assert (got.argmax(1) == logits[:, 0].argmax(1)).all()
        assert (got.floor().sum(1) == 1).all()  # one vote, no tie bonus


def test_kept_views_counts() -> None:
    assert [kept_views(64, 0.1), kept_views(64, 0.3), kept_views(10, 0.3), kept_views(5, 0.1)] == [6, 19, 3, 1]


# ---- AWT --------------------------------------------------------------------------------------------
def _softmax(x: list[float]) -> list[float]:
    top = max(x)
    e = [math.exp(v - top) for v in x]
    return [v / sum(e) for v in e]


def _entropy(x: list[float]) -> float:
    return -sum(p * math.log(p) for p in _softmax(x) if p > 0)


def _awt_loop(views: torch.Tensor, texts: list[torch.Tensor], scale: float, tv: float = 0.5, tt: float = 0.5,
              eps: float = 0.1, iterations: int = 100, tolerance: float = 1e-2) -> list[float]:
    """AWT for one image, class by class and text by text (transport.py's docstring), in float64."""
    views = views.double()
    cos = [views @ t.double().T for t in texts]  # per class [M, N_c]
    classes, m = len(texts), len(views)
    mean = [[scale * float(cos[c][v].mean()) for c in range(classes)] for v in range(m)]
    a = torch.tensor(_softmax([-_entropy(mean[v]) / tv for v in range(m)]), dtype=torch.float64)
    b = []
    for c in range(classes):
        h = []
        for n in range(len(texts[c])):
            row = list(mean[0])
            row[c] = scale * float(cos[c][0, n])
            h.append(-_entropy(row) / tt)
        b.append(torch.tensor(_softmax(h), dtype=torch.float64))
    kernels = [torch.exp(-(1 - cos[c]) / eps) for c in range(classes)]
    r = [torch.ones(m, dtype=torch.float64) for _ in range(classes)]
    s = [torch.ones(len(texts[c]), dtype=torch.float64) for c in range(classes)]
    for _ in range(iterations):
        before = [x.clone() for x in r]
        for c in range(classes):
            r[c] = a / (kernels[c] @ s[c])
            s[c] = b[c] / (kernels[c].T @ r[c])
        err = sum(float((r[c] - before[c]).abs().sum()) for c in range(classes)) / (classes * m)
        if err < tolerance:
            break
    return [float((r[c][:, None] * s[c][None, :] * kernels[c] * cos[c]).sum()) for c in range(classes)]


def _unit(*shape: int, seed: int) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def _ragged(texts: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(t) for t in texts)
    emb = torch.zeros(len(texts), n, texts[0].shape[1])
    mask = torch.zeros(len(texts), n, dtype=torch.bool)
    for c, t in enumerate(texts):
        emb[c, : len(t)], mask[c, : len(t)] = t, True
    return emb, mask


@pytest.mark.parametrize(("scale", "tolerance", "iterations"), [(100.0, 1e-2, 100), (20.0, 1e-9, 400)])
def test_awt_logits_match_a_plain_loop(scale: float, tolerance: float, iterations: int) -> None:
    views = _unit(3, 6, 16, seed=1)  # 3 images, 6 views
    texts = [_unit(n, 16, seed=10 + c) for c, n in enumerate([4, 2, 5, 1])]  # ragged: 4 classes
    emb, mask = _ragged(texts)
    got = awt_logits(views, emb, mask, scale, tolerance=tolerance, iterations=iterations, chunk=2)
    expected = torch.tensor([_awt_loop(v, texts, scale, tolerance=tolerance, iterations=iterations)
                             for v in views], dtype=torch.float32)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)


def test_sinkhorn_images_stop_on_their_own() -> None:
    """In one batch each image keeps its own stopping round, as the per-image loop does: image 0 stops
    early (its plan still moving), image 1, whose kernel is a millionth as large and so its scalings a
    million times larger, never meets the tolerance; each equals its plan computed alone."""
    gen = torch.Generator().manual_seed(5)
    kernel = torch.exp(-(1 - (torch.rand(2, 3, 4, 5, generator=gen, dtype=torch.float64) * 2 - 1)) / 0.1)
    kernel[1] *= 1e-6
    rows = torch.softmax(torch.randn(2, 4, generator=gen, dtype=torch.float64), 1)
    cols = torch.softmax(torch.randn(2, 3, 5, generator=gen, dtype=torch.float64), 2)
    both = sinkhorn(kernel, rows, cols, tolerance=0.3)
    alone = torch.cat([sinkhorn(kernel[i : i + 1], rows[i : i + 1], cols[i : i + 1], tolerance=0.3) for i in (0, 1)])
    torch.testing.assert_close(both, alone, atol=1e-15, rtol=1e-12)
    longer = sinkhorn(kernel[:1], rows[:1], cols[:1], tolerance=0.3 / 1e9)
    assert (both[0] - longer[0]).abs().max() > 1e-6  # image 0 did stop before converging


def test_awt_with_one_view_and_one_text_per_class_is_clip() -> None:
    views, text = _unit(9, 1, 16, seed=2), _unit(5, 1, 16, seed=3)
    got = awt_logits(views, text, torch.ones(5, 1, dtype=torch.bool), 100.0)
    cos = views[:, 0] @ text[:, 0].T
    torch.testing.assert_close(got, cos, atol=1e-6, rtol=1e-6)
    assert (got.argsort(1) == cos.argsort(1)).all()


def test_replaced_entropy_is_stable_and_matches_the_direct_replacement() -> None:
    gen = torch.Generator().manual_seed(4)
    anchor = torch.randn(2, 6, generator=gen) * 40  # CLIP-sized logits, one class dominating the sum
    anchor[0, 2] = 90.0
    values = torch.randn(2, 6, 3, generator=gen) * 40
    got = replaced_entropy(anchor, values)
    for b in range(2):
        for c in range(6):
            for n in range(3):
                row = anchor[b].tolist()
                row[c] = float(values[b, c, n])
                assert abs(float(got[b, c, n]) - _entropy(row)) < 1e-4


def test_sinkhorn_converged_plan_has_the_requested_marginals() -> None:
    cos = torch.rand(2, 3, 4, 5, generator=torch.Generator().manual_seed(5)) * 2 - 1
    kernel = torch.exp(-(1 - cos) / 0.1).double()
    rows = torch.softmax(torch.randn(2, 4, generator=torch.Generator().manual_seed(6)).double(), 1)
    cols = torch.softmax(torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(7)).double(), 2)  # same mass
    plan = sinkhorn(kernel, rows, cols, iterations=3000, tolerance=0.0)  # no early stop
    torch.testing.assert_close(plan.sum(3), rows[:, None].expand(-1, 3, -1), atol=1e-9, rtol=0)
    torch.testing.assert_close(plan.sum(2), cols, atol=1e-12, rtol=0)


def test_awt_texts_prefix_the_prompt_and_leave_fallback_classes_alone() -> None:
    classes = ClassList(("cat", "dog"))
    desc = resolve_descriptions(classes, {"cat": ["has whiskers", "purrs", "is small"]})
    assert awt_texts(list(classes.names), desc, "a photo of a {}.", 2) == [
        ["a photo of a cat.", "a photo of a cat. has whiskers", "a photo of a cat. purrs"], ["a photo of a dog."]]
    assert awt_texts(list(classes.names), desc, "itap of a {}", None)[0][-1] == "itap of a cat. is small"


# ---- random resized crops + flips ----------------------------------------------------------------
def _torchvision_params(width: int, height: int, area_u: list[float], ratio_u: list[float],
                        position_u: list[float]) -> list[int]:
    """RandomResizedCrop.get_params (scale (0.08, 1), ratio (3/4, 4/3)) on given uniform draws."""
    area = width * height
    log_lo, log_hi = math.log(3 / 4), math.log(4 / 3)
    for a, r in zip(area_u, ratio_u, strict=True):
        target = area * (0.08 + 0.92 * a)
        aspect = math.exp(log_lo + (log_hi - log_lo) * r)
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            x0, y0 = int(position_u[0] * (width - w + 1)), int(position_u[1] * (height - h + 1))
            return [x0, y0, x0 + w, y0 + h]
    if width / height < 3 / 4:
        w, h = width, round(width / (3 / 4))
    elif width / height > 4 / 3:
        w, h = round(height * (4 / 3)), height
    else:
        w, h = width, height
    return [(width - w) // 2, (height - h) // 2, (width - w) // 2 + w, (height - h) // 2 + h]


@pytest.mark.parametrize(("width", "height"), [(64, 48), (40, 90), (300, 7), (5, 200), (1, 1)])
def test_resized_boxes_follow_torchvision_get_params(width: int, height: int) -> None:
    gen = torch.Generator().manual_seed(width * 1000 + height)
    n = 50
    area_u = torch.rand(n, ATTEMPTS, generator=gen, dtype=torch.float64)
    ratio_u = torch.rand(n, ATTEMPTS, generator=gen, dtype=torch.float64)
    position_u = torch.rand(n, 2, generator=gen, dtype=torch.float64)
    got = boxes_from_draws(width, height, ResizedCropConfig(), area_u, ratio_u, position_u).tolist()
    expected = [_torchvision_params(width, height, area_u[i].tolist(), ratio_u[i].tolist(), position_u[i].tolist())
                for i in range(n)]
    assert got == expected
    assert all(0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height for x0, y0, x1, y1 in got)


def test_resized_plans_are_seeded_per_image() -> None:
    spec = PreprocessSpec(32)
    cfg = ResizedCropConfig(crops=8)
    a = sample_resized_plan(64, 48, spec, 4, cfg, 0, "a.png")
    assert a == sample_resized_plan(64, 48, spec, 4, cfg, 0, "a.png")
    assert a.boxes != sample_resized_plan(64, 48, spec, 4, cfg, 1, "a.png").boxes
    assert a.boxes != sample_resized_plan(64, 48, spec, 4, cfg, 0, "b.png").boxes
    assert a.sampler == "resized" and len(a.boxes) == 8 and a.windows == []
    a.validate()


def test_resize_flip_matches_pillow_crop_resize_and_mirror() -> None:
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (29, 37, 3), dtype=np.uint8)
    image = torch.from_numpy(array).permute(2, 0, 1)
    spec = PreprocessSpec(16)
    boxes = torch.tensor([[0, 0, 37, 29], [3, 2, 20, 27], [10, 5, 14, 9], [1, 0, 37, 12], [5, 5, 30, 25]])
    flips = flip_flags(boxes)
    got = raw_resize_flip(image, boxes, spec)
    mean, std = torch.tensor(spec.mean).view(3, 1, 1), torch.tensor(spec.std).view(3, 1, 1)
    for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        crop = Image.fromarray(array).crop((x0, y0, x1, y1)).resize((16, 16), Image.Resampling.BILINEAR)
        if flips[i]:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        expected = (torch.from_numpy(np.array(crop)).permute(2, 0, 1).float() / 255 - mean) / std
        torch.testing.assert_close(got[i], expected, atol=1e-5, rtol=0)


def test_flips_are_a_fair_deterministic_coin() -> None:
    boxes = torch.randint(0, 100, (400, 4), generator=torch.Generator().manual_seed(8))
    flips = flip_flags(boxes)
    assert torch.equal(flips, flip_flags(boxes.clone())) and 150 < int(flips.sum()) < 250
    assert not torch.equal(flips, flip_flags(boxes + 1))


def test_bad_settings_fail_with_one_line() -> None:
    for bad in (dict(crops=0), dict(scale=(0.5, 0.2)), dict(ratio=(0.0, 1.0))):
        with pytest.raises(ConfigError):
            ResizedCropConfig(**bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="feature-space"):
        ViewConfig(crops="resized", feature=True)
    for bad in (dict(zero_views=0), dict(zero_fraction=0.0), dict(zero_fraction=1.5), dict(awt_views=0),
                dict(awt_epsilon=-1.0), dict(awt_iterations=0), dict(awt_tolerance=float("nan"))):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            MethodOptions(**bad)  # type: ignore[arg-type]
    assert create_method("zero", MethodOptions(zero_views=1)).view_config() == ViewConfig()
    cfg = create_method("awt", MethodOptions(awt_views=5)).view_config()
    assert cfg.crops == "resized" and cfg.resized.crops == 4 and cfg.raw_augment == "resize-flip"


# ---- end to end -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes × 2 random images of different sizes, plus one unreadable file."""
    return write_folder_dataset(tmp_path_factory.mktemp("zero_awt_folder"), 1, broken=b"not an image")


def test_eval_runs_every_variant(folder: Path, descriptions: Path, tiny_openai_checkpoint: Path,
                                 tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["eval", "--dataset", "folder", "--root", folder, "--descriptions", descriptions, "--methods",
            ",".join(VARIANTS), "--seeds", "0", "--output-dir", out, "--model", f"openai:{tiny_openai_checkpoint}",
            "--cache-dir", tmp_path / "text", "--view-cache", tmp_path / "views", "--saliency", "uniform",
            "--crops", "3", "--random-crops", "3", "--zero-views", "6", "--awt-views", "4", "--batch-size", "2"]
    assert cli.main([str(a) for a in args]) == 0
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["method"] for r in records] == VARIANTS
    assert all(r["n_samples"] == 6 for r in records)
    settings = {r["method"]: r["settings"] for r in records}
    assert settings["zero"]["zero_views"] == 6 and settings["awt"]["awt_views"] == 4


def test_classify_runs_zero_and_awt(folder: Path, descriptions: Path, tiny_openai_checkpoint: Path,
                                    tmp_path: Path) -> None:
    for method in ("zero", "awt"):
        out = tmp_path / f"{method}.jsonl"
        args = ["classify", folder / "cat", "--classes", ",".join(CLASSES), "--descriptions", descriptions,
                "--method", method, "--model", f"openai:{tiny_openai_checkpoint}", "--cache-dir", "",
                "--zero-views", "5", "--awt-views", "3", "--top-k", "2", "--output", out]
        assert cli.main([str(a) for a in args]) == 0
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert len(rows) == 2 and all(r["label"] in CLASSES for r in rows)


def _evaluate(checkpoint: Path, folder: Path, methods: dict, descriptions: dict):  # type: ignore[no-untyped-def]
    from absclip.backbones import create_backbone
    from absclip.data import create_dataset
    from absclip.evaluate import Evaluator

    backbone = create_backbone(f"openai:{checkpoint}", pretrained=None, device="cpu")
    dataset = create_dataset("folder", folder)
    desc = {label: resolve_descriptions(dataset.classes, data) for label, data in descriptions.items()}
    result = Evaluator(backbone, dataset, methods, [0], descriptions=desc, text_cache="", warn=lambda _: None).run()
    assert result is not None
    return backbone, dataset, {run.method: run.logits for run in result.runs}


def test_one_view_zero_and_awt_equal_clip(folder: Path, tiny_openai_checkpoint: Path) -> None:
    """ZERO with one view is CLIP's argmax; AWT with one view and one text per class (here: no descriptions,
    so each class is its prompt alone) is CLIP's logits."""
    methods = {"clip": create_method("clip"), "zero": create_method("zero", MethodOptions(zero_views=1)),
               "awt": create_method("awt", MethodOptions(awt_views=1))}
    _, _, logits = _evaluate(tiny_openai_checkpoint, folder, methods, {"awt": {}})
    assert torch.equal(logits["zero"].argmax(1), logits["clip"].argmax(1))
    assert (logits["zero"].floor().sum(1) == 1).all()
    torch.testing.assert_close(logits["awt"], logits["clip"], atol=1e-6, rtol=1e-6)


def test_evaluator_awt_and_zero_match_the_formulas_on_extracted_views(folder: Path, descriptions: Path,
                                                                      tiny_openai_checkpoint: Path) -> None:
    """The evaluator's AWT and ZERO logits equal the formulas applied here to views extracted directly and
    to texts written out by hand (so view order, text construction and rows line up)."""
    from absclip.classifier import to_uint8_tensor

    data = json.loads(descriptions.read_text())
    options = MethodOptions(zero_views=7, awt_views=5)
    methods = {"awt": create_method("awt", options), "zero": create_method("zero", options)}
    backbone, dataset, logits = _evaluate(tiny_openai_checkpoint, folder, methods, {"awt": data})
    good = [p for p, _ in dataset.samples if p.name != "broken.png"]
    images, keys = [to_uint8_tensor(p) for p in good], [str(p) for p in good]
    names = list(dataset.classes.names)
    texts = [[f"a photo of a {c}."] + [f"a photo of a {c}. {d}" for d in data[c]] for c in names]
    emb, mask = _ragged([backbone.encode_text(t) for t in texts])
    views, _ = ViewExtractor.for_method(methods["awt"], backbone)(images, keys)
    stacked = torch.cat([views.full[:, None], views.raw], dim=1)
    assert stacked.shape[1] == 5
    torch.testing.assert_close(logits["awt"], awt_logits(stacked, emb, mask, backbone.logit_scale), atol=1e-5,
                               rtol=1e-5)
    views, _ = ViewExtractor.for_method(methods["zero"], backbone)(images, keys)
    stacked = torch.cat([views.full[:, None], views.raw], dim=1)
    prompts = backbone.encode_text([f"a photo of a {c}." for c in names])
    expected = zero_logits(backbone.logit_scale * stacked @ prompts.T, 0.1)
    torch.testing.assert_close(logits["zero"], expected, atol=1e-5, rtol=1e-5)

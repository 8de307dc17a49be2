"""Extending absclip as a newcomer would: a method, a saliency source and a dataset, each written as one
class or function plus its registration, with no edit anywhere else, run end to end through the CLI."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import absclip.cli as cli
from absclip.attention.base import SALIENCY, Saliency, SaliencySource, whole_image_extents
from absclip.backbones import Backbone
from absclip.data import base as data_base
from absclip.data.base import DatasetRequest, LabelledImages, class_folders, folder_samples, register_dataset
from absclip.methods import METHODS, Method, TextInputs
from absclip.views import ViewSet

CLASSES = ["cat", "dog", "bird"]


class BestDescription(Method):
    """Class score = the best single description's cosine (a plausible new description method)."""

    name = "best-description"
    description_kind = "cupl"

    def prepare(self, inputs: TextInputs) -> None:
        desc = self._require_descriptions(inputs)
        self.ragged = inputs.embedder.embed_ragged(desc.texts)

    def score(self, views: ViewSet) -> torch.Tensor:
        sims = torch.einsum("bd,cmd->bcm", views.full, self.ragged.embeddings)  # [B, C, M]
        return sims.masked_fill(~self.ragged.mask[None], -2.0).amax(dim=2)


class CentreSaliency(SaliencySource):
    """A Gaussian centre prior: a plausible new saliency source with no model."""

    name = "centre"

    def __call__(self, images: Sequence[torch.Tensor]) -> Saliency:
        axis = torch.linspace(-1, 1, 8)
        prior = torch.exp(-(axis[:, None] ** 2 + axis[None, :] ** 2) * 2)
        return Saliency(prior.expand(len(images), 8, 8).clone(), whole_image_extents(images))


def _centre(location: str | None, backbone: Backbone) -> SaliencySource:
    return CentreSaliency()


def _load_flat(req: DatasetRequest) -> LabelledImages:
    folders = class_folders(req.root)
    return req.make(folder_samples(req, req.root, folders), req.resolve_classes(len(folders), folders))


@pytest.fixture
def extended(monkeypatch: pytest.MonkeyPatch) -> None:
    """Register the three extensions in copies of the registries, so other tests never see them."""
    monkeypatch.setattr(METHODS, "_factories", dict(METHODS._factories))
    monkeypatch.setattr(SALIENCY, "_factories", dict(SALIENCY._factories))
    monkeypatch.setattr(data_base.DATASETS, "_factories", dict(data_base.DATASETS._factories))
    monkeypatch.setattr(data_base, "_INFO", dict(data_base._INFO))
    METHODS.register(BestDescription.name)(BestDescription)
    SALIENCY.register("centre")(_centre)
    register_dataset("flat-folders", layout="ROOT/<class>/<image>")(_load_flat)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for name in CLASSES:
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (40 + 10 * i, 50, 3), dtype=np.uint8)).save(
                tmp_path / "data" / name / f"{i}.png")
    return tmp_path / "data"


def test_new_method_saliency_and_dataset_run_end_to_end(extended: None, root: Path, descriptions: Path,
                                                       tiny_openai_checkpoint: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    model = ["--model", f"openai:{tiny_openai_checkpoint}", "--cache-dir", str(tmp_path / "cache")]
    out = tmp_path / "eval"
    assert cli.main(["eval", "--dataset", "flat-folders", "--root", str(root), "--descriptions", str(descriptions),
                     "--methods", "best-description,abs", "--saliency", "centre", "--crops", "3",
                     "--output-dir", str(out), *model]) == 0
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["dataset"], r["method"]) for r in records] == [("flat-folders", "best-description"),
                                                              ("flat-folders", "abs")]
    assert all(r["n_samples"] == 6 for r in records)

    plans = tmp_path / "plans.jsonl"
    assert cli.main(["plan", str(root), "--output", str(plans), "--saliency", "centre", "--crops", "3", *model]) == 0
    lines = [json.loads(line) for line in plans.read_text().splitlines()]
    assert len(lines) == 6 and all(len(p["boxes"]) == 3 for p in lines)

    labels = tmp_path / "labels.jsonl"
    assert cli.main(["classify", str(root), "--classes", ",".join(CLASSES), "--descriptions", str(descriptions),
                     "--method", "best-description", "--output", str(labels), *model]) == 0
    assert sum(1 for _ in labels.read_text().splitlines()) == 6
    capsys.readouterr()
    assert cli.main(["methods"]) == 0
    assert "best-description\t" in capsys.readouterr().out

"""PerceptionCLIP (An, Zhu, Panaitescu-Liess, Mummadi & Huang, ICLR 2024, "PerceptionCLIP: Visual
Classification by Inferring and Conditioning on Contexts", arXiv 2308.01313; reference code
umd-huang-lab/perceptionCLIP, ``perceptionclip_two_step.py`` with ``infer_mode=0``).

Contextual attributes z (a composition of attribute values, e.g. condition × quality: "cool, blurry") are
first inferred with CLIP, then the class is read conditioned on them:

    f(y, z; x) = s · cos(x, e[y, z]),   e[y, z] = normalise(mean_i g("{main(y)}, {desc_i(z)}."))   # [B, C, Z]
    P(z | x)   = Σ_y exp(f(y, z; x) / T) / Σ_z' Σ_y exp(f(y, z'; x) / T)      (intervention temperature T)
    P(y | x,z) = softmax_y f(y, z; x)
    P(y | x)   = Σ_z P(z | x) · P(y | x, z)

s is the model's logit scale (100 for OpenAI's weights). Everything is computed in log space (the reference
exponentiates 100·cos directly). The attributes, main templates, each dataset's composition and T are data
in ``resources/perception_attributes.json`` (from the reference's template files and run scripts: ImageNet
composes condition and quality with T = 3; CUB size, background and condition with T = 1 ...). The logits
are log P(y | x), so softmax gives P(y | x) back.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from ..backbones import Backbone
from ..data import DataFiles
from ..errors import ConfigError, InputFileError
from ..scoring import view_text_cosine
from ..views import ViewSet
from .base import Method, MethodOptions, TextInputs, register_method

RESOURCE = "perception_attributes.json"


def composite_values(factors: dict[str, dict[str, list[str]]], selected: list[str]) -> dict[str, list[str]]:
    """Every combination of one value per selected attribute, in order: ``{"cool_blurry": [desc, ...]}``.

    A combination's descriptions are the product of its values' descriptions joined by ", ", empty parts
    left out (the reference's ``generate_composite_factors``; repeated texts are kept, as it keeps them)."""
    out: dict[str, list[str]] = {"": [""]}
    for name in reversed(selected):  # the first attribute varies slowest, as in the reference's recursion
        out = {f"{value}_{rest}" if rest else value: [v + (", " + r if r else "") if v else r for v in descs
                                                      for r in rest_descs]
               for value, descs in factors[name].items() for rest, rest_descs in out.items()}
    return out


def context_text(main: str, name: str, description: str) -> str:
    """``{main(name)}, {description}.``, or ``{main(name)}.`` for the empty description."""
    head = main.replace("{c}", "{}").format(name)
    return f"{head}, {description}." if description else f"{head}."


def perception_log_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """log P(y | x) [B, C] from f(y, z; x) [B, C, Z] (the module docstring's three lines, in log space)."""
    f = logits.float()
    tempered = f / temperature
    log_pz = torch.logsumexp(tempered, dim=1) - torch.logsumexp(tempered.flatten(1), dim=1, keepdim=True)  # [B, Z]
    log_py_z = torch.log_softmax(f, dim=1)  # [B, C, Z]
    return torch.logsumexp(log_pz[:, None, :] + log_py_z, dim=2)


def load_presets() -> dict[str, Any]:
    text = resources.files("absclip").joinpath("resources").joinpath(RESOURCE).read_text(encoding="utf-8")
    return json.loads(text)


def load_attributes(spec: str) -> dict[str, Any]:
    """A preset of the packaged file by name, or a JSON file holding one preset (same schema); checked."""
    presets = load_presets()["presets"]
    if spec in presets:
        preset, source = presets[spec], f"preset {spec!r}"
    else:
        path = Path(spec)
        if not path.is_file():
            raise ConfigError(f"perception_attributes: {spec!r} is neither a preset ({', '.join(presets)}) nor a "
                              "JSON file")
        try:
            preset, source = json.loads(path.read_text(encoding="utf-8")), str(path)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputFileError(f"{path}: not a readable PerceptionCLIP attribute file ({exc})") from exc
    _check_preset(preset, source)
    return preset


def _check_preset(preset: object, source: str) -> None:
    shape = ('{"main": "a photo of a {}", "factors": {attribute: {value: [description, ...]}}, '
             '"default_factors": [attribute, ...], "temperature": T}')
    def texts(d: object) -> bool:
        return isinstance(d, list) and bool(d) and all(isinstance(t, str) for t in d)

    ok = (isinstance(preset, dict) and isinstance(preset.get("main"), str) and "{" in preset["main"]
          and isinstance(preset.get("factors"), dict) and preset["factors"]
          and all(isinstance(vals, dict) and vals and all(texts(d) for d in vals.values())
                  for vals in preset["factors"].values())
          and isinstance(preset.get("default_factors"), list) and preset["default_factors"]
          and isinstance(preset.get("temperature"), (int, float)) and preset["temperature"] > 0)
    if not ok:
        raise InputFileError(f"{source}: a PerceptionCLIP attribute preset must look like {shape}")


@register_method
class PerceptionClipMethod(Method):
    name = "perceptionclip"
    summary = ("infers contextual attributes z with CLIP, then P(y|x) = Σ_z P(z|x)·P(y|x,z); ImageNet preset "
               "condition × quality, intervention temperature 3 (perception_attributes, _factors, _temperature)")

    def __init__(self, options: MethodOptions | None = None) -> None:
        super().__init__(options)
        o = self.options
        self.preset = load_attributes(o.perception_attributes)
        factors = (o.perception_factors.split(",") if o.perception_factors else self.preset["default_factors"])
        self.factors = [f.strip() for f in factors if f.strip()]
        unknown = [f for f in self.factors if f not in self.preset["factors"]]
        if unknown or not self.factors:
            raise ConfigError(f"perception_factors: unknown attribute(s) {unknown or factors} for "
                              f"{o.perception_attributes!r}; choose from {', '.join(self.preset['factors'])}")
        t = o.perception_temperature
        self.temperature = float(self.preset["temperature"] if t is None else t)

    @classmethod
    def dataset_options(cls, files: DataFiles, imagenet_labels: bool) -> dict[str, Any]:
        """The reference's attribute preset of the dataset (ImageNet's for the ImageNet family)."""
        preset = load_presets()["datasets"].get(files.dataset)
        return {} if preset is None else {"perception_attributes": preset}

    def prepare(self, inputs: TextInputs) -> None:
        values = composite_values(self.preset["factors"], self.factors)
        main = self.preset["main"]
        texts = [[context_text(main, name, d) for d in descs] for name in inputs.classes.names
                 for descs in values.values()]  # class-major: row y·Z + z
        emb = inputs.embedder.mean_embeddings(texts)  # [C·Z, D]
        self.text = emb.view(len(inputs.classes), len(values), -1)  # [C, Z, D]
        self.values = list(values)
        self.scale = float(inputs.backbone.logit_scale)

    def context_logits(self, views: ViewSet) -> torch.Tensor:
        """f(y, z; x) = s · cos(x, e[y, z]): [B, C, Z]."""
        f = views.full.float()
        return self.scale * view_text_cosine("bd,czd->bcz", f, self.text.to(f))

    def score(self, views: ViewSet) -> torch.Tensor:
        return perception_log_probs(self.context_logits(views), self.temperature)

    def probability_scale(self, backbone: Backbone, views: ViewSet) -> float:
        return 1.0  # log-probabilities: softmax returns P(y | x)

"""A method = a text side (embeddings prepared once per class list) + the views it needs + a score.

Everything the rest of absclip needs to know about a method is an attribute or hook of its class
(which description file it reads, whether its text side depends on the seed, which ImageNet class
names it uses, the views and saliency it needs), so adding a method is one module that registers
itself with ``@register_method`` plus its import in ``methods/__init__.py``.
"""

from __future__ import annotations

import math
import operator
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ..adapt import AdaptOptions
from ..backbones import Backbone
from ..data import DataFiles
from ..errors import ConfigError, InputFileError
from ..registry import Registry
from ..text import ClassList, Descriptions, TextEmbedder
from ..text.prompts import CLIP_PROMPT, format_template
from ..text.selection import select_class_descriptions
from ..views import AbsSamplerConfig, CropKind, RandomCropConfig, ViewConfig, ViewSet
from .llm import LlmOptions  # FuDD (methods/fudd.py)


@dataclass
class MethodOptions:
    """Every knob of every method, as data; each method reads the ones it uses (see ``absclip classify --help``)."""

    template: str = CLIP_PROMPT
    templates: str = "imagenet"  # CLIP-E: "imagenet" (OpenAI's 80) or a template file
    clip_d_reference_quirk: bool = False
    waffle_count: int = 15
    waffle_words: str | list[str] | None = None  # a JSON word-list file, or the words
    max_descriptions: int | None = 50  # per class, for the per-description methods (ABS, MCE)
    wca_max_descriptions: int | None = None  # the WCA reference uses all of them
    temperature: float = 0.03
    saliency: str = "dino"
    raw: bool = True
    feature: bool = True
    soft_match: bool = True
    view_weights: bool = False
    feature_layer: int = -1
    raw_augment: str = "crop"  # paper Table 5: crop | mask | highlight | redcircle
    feature_augment: str = "crop"  # paper Table 5: crop | mask | highlight-fea | highlight-attn
    abs_sampler: AbsSamplerConfig = field(default_factory=AbsSamplerConfig)
    random_crops: RandomCropConfig = field(default_factory=RandomCropConfig)
    seed: int = 0
    micro_batch: int | None = None  # None: 8 on CPU, 64 on CUDA
    adapt: AdaptOptions = field(default_factory=AdaptOptions)  # few-shot / test-time methods (absclip.adapt)
    # FuDD (methods/fudd.py): confusable classes re-scored per image, and the LLM that describes their pairs
    fudd_k: int = 10
    llm: LlmOptions = field(default_factory=LlmOptions)
    # description selection (text/selection.py), in front of every description method: m kept per class
    select_descriptions: int | None = None  # None: off; the paper keeps 5
    select_neighbours: int = 3  # k: the class and its k-1 nearest classes in text space
    select_pool: str = "own"  # own: a class keeps some of its own descriptions; all: any class's
    # dsel (methods/dsel.py): per-image selection among the image's top-k classes
    dsel_descriptions: int = 5  # m
    dsel_neighbours: int = 3  # k
    dsel_pool: str = "all"  # the reference pools every description of the dataset
    dsel_classname_weight: float | None = None  # None: "{prompt}, {description}." texts; w: w·prompt + mean
    # PerceptionCLIP (methods/perception_clip.py): contextual attributes from resources/perception_attributes.json
    perception_attributes: str = "imagenet"  # a preset of that file, or a JSON file of the same schema
    perception_factors: str | None = None  # comma list of attributes; None: the preset's
    perception_temperature: float | None = None  # the intervention temperature of P(z|x); None: the preset's
    # ZPE (methods/zpe.py): softmax temperature of the prompt / description scores, and MAD prompt selection
    zpe_temperature: float = 1.0  # the authors' notebook: softmax of scores computed on scale·cos logits
    zpe_select_mad: float | None = None  # None: weighted average over all; the paper: 0.5 ImageNet, 2.0 fine
    # ZERO (methods/zero.py), AWT (methods/awt.py): views per image, the original image included
    zero_views: int = 64  # the original + 63 random resized crops with flips (the paper's N)
    zero_fraction: float = 0.1  # γ: the lowest-entropy fraction of the views that votes (the paper's)
    awt_views: int = 51  # the original + 50 augmented (the authors' pre_extract.py)
    awt_view_temperature: float = 0.5  # softmax temperature of the view weights (entropy-based)
    awt_text_temperature: float = 0.5  # and of the description weights
    awt_epsilon: float = 0.1  # Sinkhorn's entropic regularisation, on cost 1 - cos
    awt_iterations: int = 100  # at most this many Sinkhorn rounds
    awt_tolerance: float = 0.01  # stop once the mean change of the row scalings is below it

    def __post_init__(self) -> None:
        """Checked when the options are built, so a bad value fails before any model loads."""
        def whole(value: object) -> bool:  # ints, numpy's too; bool is an int subclass but True is no count
            try:
                operator.index(value)  # type: ignore[arg-type]
            except TypeError:
                return False
            return not isinstance(value, bool)

        t = self.temperature
        try:  # zero gives NaN scores and a negative one ranks classes backwards
            positive = not isinstance(t, bool) and math.isfinite(t) and t > 0
        except TypeError:
            positive = False
        if not positive:
            raise ConfigError(f"the soft-matching temperature must be a positive number, got {t!r}")
        for name in ("max_descriptions", "wca_max_descriptions"):
            value = getattr(self, name)
            if value is not None and (not whole(value) or value < 1):
                raise ConfigError(f"{name} must be None (all) or at least 1, got {value!r}")
        if self.micro_batch is not None and (not whole(self.micro_batch) or self.micro_batch < 1):
            raise ConfigError(f"micro_batch must be positive, got {self.micro_batch!r}")
        if not whole(self.fudd_k) or self.fudd_k < 2:  # FuDD (methods/fudd.py)
            raise ConfigError(f"fudd_k (the confusable classes re-scored per image) must be at least 2, "
                              f"got {self.fudd_k!r}")
        if not isinstance(self.llm, LlmOptions):  # FuDD (methods/fudd.py)
            raise ConfigError(f"llm must be an LlmOptions, got {type(self.llm).__name__}")
        if not whole(self.waffle_count) or self.waffle_count < 1:
            raise ConfigError(f"waffle_count must be at least 1, got {self.waffle_count!r}")
        for name in ("feature_layer", "seed"):
            if not whole(getattr(self, name)):
                raise ConfigError(f"{name} must be an integer, got {getattr(self, name)!r}")
        for name, kind in (("abs_sampler", AbsSamplerConfig), ("random_crops", RandomCropConfig)):
            if not isinstance(getattr(self, name), kind):
                raise ConfigError(f"{name} must be an {kind.__name__}, got {type(getattr(self, name)).__name__}")
        # description selection, dsel, PerceptionCLIP
        for name in ("select_descriptions", "select_neighbours", "dsel_descriptions", "dsel_neighbours"):
            value = getattr(self, name)
            if (value is not None or name != "select_descriptions") and (not whole(value) or value < 1):
                raise ConfigError(f"{name} must be at least 1, got {value!r}")
        for name in ("select_pool", "dsel_pool"):
            if getattr(self, name) not in ("own", "all"):
                raise ConfigError(f"{name} must be 'own' or 'all', got {getattr(self, name)!r}")
        for name, low in (("dsel_classname_weight", "non-negative"), ("perception_temperature", "positive")):
            value = getattr(self, name)
            ok = value is None or (not isinstance(value, bool) and isinstance(value, (int, float))
                                   and math.isfinite(value) and (value > 0 or (value == 0 and low != "positive")))
            if not ok:
                raise ConfigError(f"{name} must be None or a {low} number, got {value!r}")
        # ZPE: a positive softmax temperature; a selection threshold that is None or a finite number
        for name, required in (("zpe_temperature", True), ("zpe_select_mad", False)):
            value = getattr(self, name)
            ok = (value is None and not required) or (
                not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
                and (value > 0 or not required))
            if not ok:
                raise ConfigError(f"{name} must be {'a positive' if required else 'None or a finite'} number, "
                                  f"got {value!r}")
        # ZERO / AWT: counts of at least 1; positive finite numbers, ZERO's fraction at most 1
        for name in ("zero_views", "awt_views", "awt_iterations"):
            if not whole(getattr(self, name)) or getattr(self, name) < 1:
                raise ConfigError(f"{name} must be an integer of at least 1, got {getattr(self, name)!r}")
        for name in ("zero_fraction", "awt_view_temperature", "awt_text_temperature", "awt_epsilon", "awt_tolerance"):
            value, most = getattr(self, name), 1.0 if name == "zero_fraction" else math.inf
            finite = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not (finite and 0 < value <= most):
                bound = "in (0, 1]" if name == "zero_fraction" else "a positive number"
                raise ConfigError(f"{name} must be {bound}, got {value!r}")


@dataclass
class TextInputs:
    backbone: Backbone
    embedder: TextEmbedder
    classes: ClassList
    descriptions: Descriptions | None


class Method(ABC):
    """Subclasses set ``name``, implement ``prepare`` (text side) and ``score`` (views -> logits [B, C]).

    Class facts:
        description_kind: the description file it reads from a dataset's shared data (``cupl``:
            LLM sentences, ``clip-d``: short descriptor phrases), or None if it reads none.
        seed_dependent_text: its text side depends on the seed (prepared once per seed).
        imagenet_classnames: the ImageNet class-name list it uses (the reference runs CLIP-D and
            Waffle with OpenAI's curated names, ``classnames-openai``).
        needs_descriptions: derived from ``description_kind``.
        needs_llm: asks an LLM while it scores (FuDD), so it needs ``--llm-endpoint`` or an API key.
        setting: ``zero-shot`` (the image and the class texts alone), ``few-shot`` (a labelled support
            set), ``test-time`` (adapts over the test stream) or ``transductive`` (the whole unlabelled
            test set at once); the adaptive bases in ``methods/adaptive.py`` set the last three.
        summary: one line for ``absclip methods``: what the method does and its key settings (option
            names and reference defaults); every registered method sets it (tests/test_methods_listing.py).
    """

    name: ClassVar[str] = ""
    setting: ClassVar[str] = "zero-shot"
    summary: ClassVar[str] = ""
    description_kind: ClassVar[str | None] = None
    seed_dependent_text: ClassVar[bool] = False
    imagenet_classnames: ClassVar[str] = "classnames"
    needs_descriptions: ClassVar[bool] = False
    needs_llm: ClassVar[bool] = False  # asks an LLM while it scores (FuDD): needs an endpoint or a key

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.needs_descriptions = cls.description_kind is not None

    def __init__(self, options: MethodOptions | None = None) -> None:
        self.options = options or MethodOptions()
        self.view_config()  # a bad view setting fails here, before any model work

    @classmethod
    def dataset_options(cls, files: DataFiles, imagenet_labels: bool) -> dict[str, Any]:
        """Option values the reference takes from a dataset's shared files (CLIP-E's templates ...)."""
        return {}

    def view_config(self) -> ViewConfig:
        """The views this method scores; the full image only, unless overridden."""
        return ViewConfig(seed=self.options.seed, micro_batch=self.options.micro_batch)

    def _random_crop_views(self) -> ViewConfig:
        """K random square crops encoded as images (WCA, MCE)."""
        o = self.options
        return ViewConfig(crops=CropKind.RANDOM, raw=True, feature=False, random=o.random_crops, seed=o.seed,
                          micro_batch=o.micro_batch)

    @abstractmethod
    def prepare(self, inputs: TextInputs) -> None:
        """Compute and keep the text-side tensors for this class list."""

    @abstractmethod
    def score(self, views: ViewSet) -> torch.Tensor:
        """Logits [B, C]."""

    def probability_scale(self, backbone: Backbone, views: ViewSet) -> float:
        """Factor turning this method's logits into softmax inputs for class probabilities.

        Cosine logits use the model's own logit scale, as CLIP does; soft-matching logits are sums of
        per-view scores already divided by the temperature, so they are averaged over the views.
        """
        return backbone.logit_scale

    # shared helpers -----------------------------------------------------------------------------
    def _require_descriptions(self, inputs: TextInputs) -> Descriptions:
        if inputs.descriptions is None:
            raise InputFileError(
                f"method {self.name!r} needs class descriptions: pass --descriptions FILE.json "
                "({class: [text, ...]}), or write one with `absclip describe`"
            )
        o = self.options
        if o.select_descriptions is not None:  # description selection, in front of every description method
            return select_class_descriptions(inputs.descriptions, inputs.embedder, self._prompt_embeddings(inputs),
                                             o.select_descriptions, o.select_neighbours, o.select_pool)
        return inputs.descriptions

    def _prompt_embeddings(self, inputs: TextInputs) -> torch.Tensor:
        return inputs.embedder.embed([format_template(self.options.template, n) for n in inputs.classes.names])


METHODS: Registry[Method] = Registry("method")


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: register ``cls`` under ``cls.name``."""
    METHODS.register(cls.name)(cls)
    return cls

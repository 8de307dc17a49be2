"""GDA (few-shot, Wang et al. 2024): Gaussian discriminant + zero-shot, shrinkage precision, α searched.

Every view of every support image is one sample of its class (the reference's 10 augmented views per
image; here the full image, or the MCE / ABS crops). logits = zero-shot + α·(f·Wᵀ + b), the linear term
averaged over the query's views. α: ``adapt.gda_alpha``, or (default) the reference's grid
0.0001 ... 100 searched on ``min(shots, adapt.val_shots)`` further support images per class, drawn
disjoint from the shots (CoOp's few-shot validation rule; on ImageNet the reference searches on the
test set itself, which absclip never does).
"""

from __future__ import annotations

from typing import Any

import torch

from ..adapt import GDA_ALPHA_GRID, LabelledViews
from ..adapt.formulas import gda_classifier, gda_linear_logits, select_alpha
from ..data import DataFiles
from ..views import ViewSet
from .adaptive import FewShotMethod
from .base import register_method


@register_method
class GdaMethod(FewShotMethod):
    name = "gda"
    summary = ("Gaussian discriminant (shared shrinkage covariance) + zero-shot, full image; adapt.shots=16, "
               "adapt.gda_alpha=None (searched on adapt.val_shots=4 held-out images per class)")

    @classmethod
    def dataset_options(cls, files: DataFiles, imagenet_labels: bool) -> dict[str, Any]:
        """On ImageNet-labelled data the reference's zero-shot text is the seven-template ensemble."""
        return {"adapt.text": "imagenet-7"} if imagenet_labels and cls.views_kind == "full" else {}

    def wants_validation(self) -> bool:
        return self.options.adapt.gda_alpha is None and self.options.adapt.shots_for_validation > 0

    def fit(self, support: LabelledViews, validation: LabelledViews | None = None) -> dict[str, Any]:
        feats = self.image_features(support.views)  # [N, V, D] (pooled queries)
        labels = support.labels.repeat_interleave(feats.shape[1])
        self.weights, self.bias = gda_classifier(feats.reshape(-1, feats.shape[2]), labels, self.num_classes)
        self.fitted = True
        fixed = self.options.adapt.gda_alpha
        if fixed is not None or validation is None:
            # no validation images (val_shots 0): the reference's starting value of its search
            self.alpha = 0.1 if fixed is None else float(fixed)
            return {"alpha": self.alpha, "alpha_searched": False}
        self.alpha, acc = select_alpha(self.zero_shot_logits(validation.views), self._linear(validation.views),
                                       validation.labels, GDA_ALPHA_GRID)
        return {"alpha": self.alpha, "alpha_searched": True, "validation_acc1": acc,
                "validation_images": len(validation.labels)}

    def _linear(self, views: ViewSet) -> torch.Tensor:
        queries = self.image_features(views)
        return gda_linear_logits(queries, self.weights.to(queries), self.bias.to(queries))

    def score(self, views: ViewSet) -> torch.Tensor:
        self._require_fit()
        return self.zero_shot_logits(views) + self.alpha * self._linear(views)


@register_method
class GdaMceMethod(GdaMethod):
    name = "gda+mce"
    description_kind = "cupl"
    views_kind = "mce"
    summary = ("GDA with every random crop a sample (both sides), soft matching as the zero-shot part; "
               "random_crops.crops=60, adapt.gda_alpha=None (searched)")


@register_method
class GdaAbsMethod(GdaMethod):
    name = "gda+abs"
    description_kind = "cupl"
    views_kind = "abs"
    summary = ("GDA on ABS's attention-guided raw + feature crops (both sides), soft matching; "
               "abs_sampler.crops=50, adapt.gda_alpha=None (searched)")

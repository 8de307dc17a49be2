"""absclip: training-free zero-shot image classification with vision-language models.

    from absclip import ZeroShotClassifier
    clf = ZeroShotClassifier.create(["cat", "dog"], method="abs", descriptions="cupl.json")
    clf.predict(["photo.jpg"]).labels
"""

from .backbones import Backbone, create_backbone
from .classifier import Prediction, ZeroShotClassifier
from .methods import MethodOptions, create_method, list_methods
from .text import load_classes, load_descriptions

__version__ = "0.1.0"

__all__ = [
    "Backbone",
    "MethodOptions",
    "Prediction",
    "ZeroShotClassifier",
    "create_backbone",
    "create_method",
    "list_methods",
    "load_classes",
    "load_descriptions",
]

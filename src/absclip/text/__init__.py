"""Text side: class lists, description files, prompt builders and cached text embeddings."""

from .classes import ClassList, load_classes
from .descriptions import Descriptions, Resolution, load_descriptions, resolve_descriptions
from .embed import RaggedEmbeddings, TextEmbedder, masked_mean_normalised

__all__ = [
    "ClassList",
    "Descriptions",
    "RaggedEmbeddings",
    "Resolution",
    "TextEmbedder",
    "load_classes",
    "load_descriptions",
    "masked_mean_normalised",
    "resolve_descriptions",
]

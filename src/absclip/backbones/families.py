"""Which family an open_clip architecture belongs to and what absclip can do with it, read from its
config alone (no model is built), for ``absclip models`` and the README's table.

The reasons match what the adapters report at run time (``Backbone.capabilities``): a tower without one
token grid (ResNet, ConvNeXt, FastViT, Swin) has raw crops only; every ViT-style tower has feature
crops; ``--saliency clip`` needs a CLS token or an attention-pool query.
"""

from __future__ import annotations

from dataclasses import dataclass

NO_GRID = "no single token grid to crop (a convolutional, hierarchical or relative-position tower): use --no-feature"
NO_GRID_ATTENTION = "no attention over a token grid (not a ViT): use --saliency dino"
NO_QUERY = "no CLS token or pooling query attends over the grid: use --saliency dino"


@dataclass(frozen=True)
class Family:
    """A family of architectures: its name, an example spec and None (ok) or why not, per capability."""

    name: str
    example: str
    feature_crops: str | None = None
    clip_saliency: str | None = None

    def row(self) -> tuple[str, str, str, str]:
        """(family, raw crops, feature crops, clip saliency) as 'yes' or 'no: reason'."""
        def say(reason: str | None) -> str:
            if reason is None:
                return "yes"
            return reason if reason.startswith("depends") else f"no: {reason}"

        return self.name, "yes", say(self.feature_crops), say(self.clip_saliency)


OPEN_CLIP_FAMILIES = {
    "clip-vit": Family("CLIP ViT (OpenAI, LAION, MetaCLIP, DFN, CoCa; open_clip's own ViT)", "ViT-B-16"),
    "clip-resnet": Family("CLIP ResNet (ModifiedResNet)", "RN50", NO_GRID, NO_GRID_ATTENTION),
    "siglip": Family("SigLIP (timm ViT, attention-pool head, no CLS)", "ViT-B-16-SigLIP"),
    "siglip2": Family("SigLIP2 (timm ViT, attention-pool head, no CLS)", "ViT-B-16-SigLIP2"),
    "eva": Family("EVA / EVA02 (timm Eva: CLS, rotary embeddings)", "EVA02-B-16"),
    "pe-core": Family("PE-Core (timm Eva: CLS, rope attention, attention-pool head)", "PE-Core-B-16"),
    "timm-vit": Family("other timm ViT towers (ViTamin, MobileCLIP-B)", "ViTamin-S", None,
                       "depends: yes with CLS pooling (MobileCLIP-B); ViTamin pools by average, so no: use "
                       "--saliency dino"),
    "timm-cnn": Family("other timm towers (ConvNeXt, FastViT, Swin, relative-position ViT)", "convnext_base",
                       NO_GRID, NO_GRID_ATTENTION),
}


def open_clip_family(name: str) -> str:
    """The :data:`OPEN_CLIP_FAMILIES` key of open_clip architecture ``name``."""
    from open_clip.factory import get_model_config

    cfg = get_model_config(name) or {}
    vision = cfg.get("vision_cfg", {})
    timm_name = str(vision.get("timm_model_name") or "")
    if not timm_name:
        return "clip-resnet" if isinstance(vision.get("layers"), (list, tuple)) else "clip-vit"
    if "siglip" in timm_name:
        tokenizer = str(cfg.get("text_cfg", {}).get("hf_tokenizer_name", ""))
        return "siglip2" if "SigLIP2" in name or "siglip2" in tokenizer.lower() else "siglip"
    if "pe_core" in timm_name:
        return "pe-core"
    if timm_name.startswith("eva"):
        return "eva"
    if timm_name.startswith(("vit", "vitamin")) and "relpos" not in timm_name:
        return "timm-vit"
    return "timm-cnn"

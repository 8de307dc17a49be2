"""Text embeddings computed in batches and cached on disk (safetensors) by model fingerprint + texts."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..backbones import Backbone
from ..io import atomic_open
from ..paths import cache_root


def model_fingerprint(backbone: Backbone) -> str:
    """Name plus a hash of the text-side weights, so two random-init models never share a cache entry."""
    digest = hashlib.sha256(backbone.name.encode())
    for name, tensor in sorted(backbone.model.state_dict().items()):
        if tensor.numel() and tensor.is_floating_point():
            sample = tensor.detach().flatten()[:4096].float().cpu()
            digest.update(name.encode())
            digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:20]


@dataclass
class RaggedEmbeddings:
    """Per-description embeddings [C, M, D] with a validity mask [C, M]: classes keep their own counts."""

    embeddings: torch.Tensor
    mask: torch.Tensor

    @property
    def counts(self) -> torch.Tensor:
        return self.mask.sum(dim=1)


class TextEmbedder:
    """Embeds lists of texts with a backbone, caching each list's embeddings on disk."""

    def __init__(self, backbone: Backbone, cache_dir: str | Path | None = None, batch_size: int = 256) -> None:
        self.backbone = backbone
        self.batch_size = batch_size
        self.cache_dir = None if cache_dir == "" else Path(cache_dir) if cache_dir else cache_root()
        self._fingerprint: str | None = None

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.backbone)
        return self._fingerprint

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised float32 embeddings [N, D] on the backbone's device."""
        if not texts:
            raise ValueError("no texts to embed")
        path = self._cache_path(texts)
        if path is not None and path.is_file():
            from safetensors.torch import load_file

            return load_file(str(path))["embeddings"].to(self.backbone.device)
        emb = self.backbone.encode_text(list(texts), batch_size=self.batch_size)
        if path is not None:
            _save_atomic(path, emb)
        return emb

    def embed_ragged(self, texts: Sequence[Sequence[str]]) -> RaggedEmbeddings:
        """Embed every text once and scatter into [C, M_max, D] with a mask (no padding copies)."""
        flat = [t for group in texts for t in group]
        emb = self.embed(flat)
        counts = torch.tensor([len(g) for g in texts], device=emb.device)
        c, m = len(texts), int(counts.max())
        mask = torch.arange(m, device=emb.device)[None, :] < counts[:, None]  # [C, M]
        out = emb.new_zeros(c, m, emb.shape[-1])
        out[mask] = emb
        return RaggedEmbeddings(out, mask)

    def mean_embeddings(self, texts: Sequence[Sequence[str]]) -> torch.Tensor:
        """normalise(mean_j g(text[c, j])) per class: [C, D]."""
        ragged = self.embed_ragged(texts)
        return masked_mean_normalised(ragged)

    def _cache_path(self, texts: Sequence[str]) -> Path | None:
        if self.cache_dir is None:
            return None
        # the compute dtype changes the embeddings (fp16 vs fp32), while the weight fingerprint does not see it
        payload = {"dtype": str(self.backbone.dtype), "texts": list(texts)}
        key = hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode()).hexdigest()[:24]
        return self.cache_dir / "text" / f"{self.fingerprint}-{key}.safetensors"


def masked_mean_normalised(ragged: RaggedEmbeddings) -> torch.Tensor:
    total = (ragged.embeddings * ragged.mask[..., None]).sum(dim=1)
    return torch.nn.functional.normalize(total / ragged.counts[:, None].clamp(min=1), dim=-1)


def _save_atomic(path: Path, emb: torch.Tensor) -> None:
    from safetensors.torch import save

    with atomic_open(path, "wb") as handle:
        handle.write(save({"embeddings": emb.detach().cpu().contiguous()}))

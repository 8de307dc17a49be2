"""Text embeddings computed in batches and cached on disk (safetensors) by model fingerprint + texts.

Each cache file carries a checksum of its tensor (:func:`absclip.cache.save_checked`). A file that is
truncated, edited or otherwise does not verify is reported in one warning line and recomputed (and
rewritten): a damaged cache must never turn into NaN scores or a traceback.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..backbones import Backbone
from ..io import atomic_open
from ..paths import cache_root

log = logging.getLogger(__name__)

CACHE_FORMAT = 2  # 2: checksummed files (older files are not looked up: their names differ)


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
            cached = _load_cached(path, len(texts))
            if cached is not None:
                return cached.to(self.backbone.device)
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
        payload = {"format": CACHE_FORMAT, "dtype": str(self.backbone.dtype), "texts": list(texts)}
        key = hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode()).hexdigest()[:24]
        return self.cache_dir / "text" / f"{self.fingerprint}-{key}.safetensors"


def masked_mean_normalised(ragged: RaggedEmbeddings) -> torch.Tensor:
    total = (ragged.embeddings * ragged.mask[..., None]).sum(dim=1)
    return torch.nn.functional.normalize(total / ragged.counts[:, None].clamp(min=1), dim=-1)


def _load_cached(path: Path, count: int) -> torch.Tensor | None:
    """The verified embeddings [count, D] in ``path``, or None (with one warning) if it cannot be trusted."""
    from ..cache import CorruptCacheError, load_checked

    try:
        tensors, _ = load_checked(path)
        emb = tensors.get("embeddings")
        if emb is None or emb.ndim != 2 or len(emb) != count or not emb.is_floating_point():
            raise CorruptCacheError("not the embeddings of these texts")
    except CorruptCacheError as exc:
        log.warning("text-embedding cache %s is damaged (%s); recomputing it", path, exc)
        return None
    except OSError as exc:
        log.warning("text-embedding cache %s cannot be read (%s); recomputing it", path, exc.strerror or exc)
        return None
    return emb


def _save_atomic(path: Path, emb: torch.Tensor) -> None:
    from ..cache import save_checked

    with atomic_open(path, "wb") as handle:
        handle.write(save_checked({"embeddings": emb}))

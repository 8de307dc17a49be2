"""Description selection (Ma, Rietdorf et al. 2024, "Does VLM Classification Benefit from LLM Description
Semantics?", arXiv 2412.11917; reference code CompVis/DisCLIP): keep the descriptions that tell a class
apart from the classes CLIP confuses it with.

The criterion, as the reference computes it (``get_selection_masks_from_vlm_feedback_imagewise``):

    S[p, c]   = similarity of description p to class c                      # [P, C]
    N         = a local label neighbourhood of k classes (c among them)      # k = 3
    keep p    iff  S[p, c] >= S[p, n]  for every n in N
    rank kept by  mean_{n in N} (S[p, c] - S[p, n])  (descending), keep the top m   # m = 5
    none kept -> the first m of the class's own descriptions (the reference's fallback)

In the reference, ``S[p, c]`` is the mean cosine between description p and a labelled selection set of
images of class c (up to 1000 per class), and N is an image's top-k classes under ``a photo of a {c}.``.
Here ``S`` is computed against any per-class reference vectors: the class prompt's text embedding (the
zero-shot, text-space stand-in: no labelled image is needed) or the mean support-image feature (the
reference's selection set, ``dsel+support``). The same criterion drives both the class-level filter in
front of every description method (``--select-descriptions``, neighbourhood = the class and its k-1
nearest classes in text space) and the per-image method ``dsel``.
"""

from __future__ import annotations

import torch

from .descriptions import Descriptions
from .embed import TextEmbedder

SELECT_POOLS = ("own", "all")
"""``own``: a class keeps some of its own descriptions; ``all``: it may take any class's (the reference
pools every description of the dataset, which suits class-name-free descriptors)."""


def description_class_similarity(descriptions: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """S[p, c] = <d_p, r_c>: descriptions [P, D] (unit norm) against per-class references [C, D] -> [P, C].

    With ``r_c`` the unnormalised mean of unit image features, this equals the reference's mean cosine
    over the selection images of class c."""
    return descriptions.float() @ references.float().T


def class_neighbourhoods(prompts: torch.Tensor, k: int) -> torch.Tensor:
    """Each class first, then its k-1 nearest other classes by prompt-embedding cosine: [C, k].

    The class-level analogue of an image's top-k neighbourhood: what a typical image of class c would
    confuse it with, judged in text space. ``k`` is capped at the number of classes."""
    c = len(prompts)
    k = min(k, c)
    sim = prompts.float() @ prompts.float().T  # [C, C]
    sim.fill_diagonal_(float("inf"))  # the class itself first, even when two classes share a name
    return sim.topk(k, dim=1).indices  # [C, k]


def discriminative_descriptions(similarity: torch.Tensor, targets: torch.Tensor, neighbourhoods: torch.Tensor,
                                m: int, candidates: torch.Tensor | None = None, chunk: int = 64,
                                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-m descriptions that separate ``targets[n]`` from every class of ``neighbourhoods[n]``.

    Args:
        similarity: S [P, C] (:func:`description_class_similarity`).
        targets: the class to describe, per row [N].
        neighbourhoods: the classes it must beat, per row [N, k] (the target may be among them: its
            difference is 0, as in the reference, which also averages it in).
        m: descriptions kept per row.
        candidates: which descriptions row n may use [N, P] (None: all of them).

    Returns:
        indices [N, m] into the P descriptions, best first, and valid [N, m] (False past the kept count).
    """
    p = similarity.shape[0]
    m_eff = min(m, p)
    out_idx, out_valid = [], []
    for i in range(0, len(targets), chunk):
        t, nb = targets[i : i + chunk], neighbourhoods[i : i + chunk]
        own = similarity[:, t].T  # [n, P]
        diff = own[:, :, None] - similarity[:, nb.reshape(-1)].T.reshape(len(t), nb.shape[1], p).transpose(1, 2)
        keep = (diff >= 0).all(dim=2)  # [n, P]
        if candidates is not None:
            keep &= candidates[i : i + chunk]
        score = diff.mean(dim=2).masked_fill(~keep, float("-inf"))  # [n, P]
        top = score.topk(m_eff, dim=1)
        out_idx.append(top.indices)
        out_valid.append(torch.isfinite(top.values))
    return first_m(torch.cat(out_idx), torch.cat(out_valid), m)  # fewer than m descriptions: padded


def first_m(indices: torch.Tensor, valid: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first m columns of [N, M] index/valid rows, padded with invalid slots when M < m."""
    pad = max(0, m - indices.shape[1])
    return (torch.cat([indices[:, :m], indices.new_zeros(len(indices), pad)], dim=1),
            torch.cat([valid[:, :m], valid.new_zeros(len(valid), pad)], dim=1))


def fill_empty(indices: torch.Tensor, valid: torch.Tensor, fallback: torch.Tensor,
               fallback_valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows that kept nothing take the fallback row (the class's first m own descriptions): [N, m] each."""
    empty = ~valid.any(dim=1, keepdim=True)  # [N, 1]
    return torch.where(empty, fallback, indices), torch.where(empty, fallback_valid, valid)


def pooled_texts(texts: list[list[str]], pool: str) -> tuple[list[str], torch.Tensor, torch.Tensor, torch.Tensor]:
    """The description pool and, per class, which entries it may use and its own first entries.

    Returns (pool texts [P], candidates [C, P] bool, own [C, M] indices into the pool in file order,
    own_valid [C, M]); ``all`` deduplicates texts across classes in class order, ``own`` keeps each class's
    texts separately and lets it use only those.
    """
    flat: list[str] = []
    where: dict[str, int] = {}
    own_lists: list[list[int]] = []
    for group in texts:
        rows = []
        for text in group:
            if pool == "all" and text in where:
                rows.append(where[text])
                continue
            where.setdefault(text, len(flat))
            rows.append(len(flat))
            flat.append(text)
        own_lists.append(list(dict.fromkeys(rows)))
    c, width = len(texts), max(len(r) for r in own_lists)
    own = torch.zeros(c, width, dtype=torch.long)
    own_valid = torch.zeros(c, width, dtype=torch.bool)
    candidates = torch.ones(c, len(flat), dtype=torch.bool) if pool == "all" else torch.zeros(c, len(flat),
                                                                                               dtype=torch.bool)
    for i, rows in enumerate(own_lists):
        own[i, : len(rows)] = torch.tensor(rows, dtype=torch.long)
        own_valid[i, : len(rows)] = True
        if pool == "own":
            candidates[i, rows] = True
    return flat, candidates, own, own_valid


def select_class_descriptions(descriptions: Descriptions, embedder: TextEmbedder, prompts: torch.Tensor, m: int,
                              k: int = 3, pool: str = "own") -> Descriptions:
    """The class-level filter: each class keeps the m descriptions that best separate it from its k-1
    nearest classes in text space (references = the class prompts [C, D]); a :class:`Descriptions` whose
    texts are the kept ones, best first, so every description method reads them unchanged."""
    flat, candidates, own, own_valid = pooled_texts(descriptions.texts, pool)
    emb = embedder.embed(flat)  # [P, D]
    device = emb.device
    sim = description_class_similarity(emb, prompts.to(device))  # [P, C]
    targets = torch.arange(len(prompts), device=device)
    idx, valid = discriminative_descriptions(sim, targets, class_neighbourhoods(prompts.to(device), k), m,
                                             candidates.to(device))
    fallback, fallback_valid = first_m(own.to(device), own_valid.to(device), m)
    idx, valid = fill_empty(idx, valid, fallback, fallback_valid)
    kept = [[flat[j] for j, ok in zip(row, ok_row, strict=True) if ok]
            for row, ok_row in zip(idx.tolist(), valid.tolist(), strict=True)]
    return Descriptions(texts=kept, resolution=descriptions.resolution,
                        source=f"{descriptions.source} (selected: {m} per class, {k}-class neighbourhood, "
                               f"pool {pool})")

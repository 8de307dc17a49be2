"""Parallel evaluation: image decoding in DataLoader workers and data-parallel view extraction.

Why two kinds of parallelism: on one GPU the encoder is usually starved by JPEG decoding in the
main process, so images are decoded by ``torch.utils.data.DataLoader`` worker processes
(:func:`decode_groups`); on a multi-GPU node each GPU runs its own process under ``torchrun``
and extracts the views of a disjoint set of cache shards (:class:`DistributedContext`).

Decoding never raises for a bad image: :class:`DecodeDataset` turns every failure into an error
string, because a worker that raises takes the whole DataLoader (and the run) down with it.

Work is split by *shard* (shard ``i`` goes to rank ``i % world_size``) rather than by sample with
``DistributedSampler``: shards are the unit the view cache stores and resumes, so no sample is
ever padded, duplicated or split across ranks, and a resumed run -- with any number of processes
-- simply skips the shards already in the cache.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from .images import DEFAULT_MAX_PIXELS, ImageLoadError, image_to_tensor, load_image
from .webdataset import TarMember

__all__ = [
    "DEFAULT_BARRIER_TIMEOUT",
    "DecodeDataset",
    "Decoded",
    "DistributedContext",
    "collate_decoded",
    "decode_groups",
    "decode_source",
    "default_workers",
    "process_group",
]

Decoded = tuple[int, torch.Tensor | None, str | None]
"""``(index, uint8 [3, H, W] tensor or None, error reason or None)`` of one sample."""

DEFAULT_BARRIER_TIMEOUT = datetime.timedelta(hours=12)
"""How long ranks wait for each other (``ABSCLIP_DIST_TIMEOUT`` seconds overrides it).

torch's default (10-30 min) is far too short here: rank 0 waits at the barrier for the slowest
rank's whole extraction, which after a resume (its own shards cached, another rank's not) can
take hours on ImageNet.
"""


def default_workers() -> int:
    """``min(4, usable CPUs)``: enough to keep one GPU fed without oversubscribing a shared node."""
    try:
        cpus = len(os.sched_getaffinity(0))  # respects taskset / cgroup CPU pinning
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))


# ---- decoding -----------------------------------------------------------------------------------
def decode_source(source: str | os.PathLike[str] | TarMember,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[torch.Tensor | None, str | None]:
    """``(uint8 [3, H, W], None)`` or ``(None, reason)`` for an image file or a WebDataset member; never
    raises for a bad file."""
    try:
        image = source.load_image(max_pixels) if isinstance(source, TarMember) else load_image(source, max_pixels)
        return image_to_tensor(image), None
    except ImageLoadError as exc:
        return None, exc.reason
    except Exception as exc:  # anything else is still one bad file, not a reason to kill the worker
        return None, f"{type(exc).__name__}: {exc}"


class DecodeDataset(Dataset):
    """Sample ``i`` -> ``(i, uint8 tensor, None)`` or ``(i, None, reason)``; never raises for a bad file.

    The index travels with the result so the consumer can check that results arrive in dataset
    order (they do with ``DataLoader``'s default ``in_order=True``; the check keeps it honest).
    The reason is the same text the single-process path stores (``ImageLoadError.reason``); the
    caller pairs it with the path, which it knows from the index.
    """

    def __init__(self, paths: Sequence[str | os.PathLike[str] | TarMember],
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.paths = [p if isinstance(p, TarMember) else Path(p) for p in paths]
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Decoded:
        image, error = decode_source(self.paths[index], self.max_pixels)
        return index, image, error


def collate_decoded(batch: list[Decoded]) -> list[Decoded]:
    """Keep the batch as a list: images differ in size (cropping happens later, per image)."""
    return list(batch)


def decode_groups(
    paths: Sequence[str | os.PathLike[str]],
    groups: Sequence[Sequence[int]],
    workers: int = 0,
    chunk_size: int = 8,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    pin_memory: bool = False,
) -> Iterator[list[Decoded]]:
    """Decode the samples of each group (e.g. a cache shard), yielding one list per group, in order.

    Groups are cut into chunks of ``chunk_size`` (never spanning two groups) so that ``workers``
    processes decode one group in parallel and the next ones ahead of time (at most
    ``2 * workers`` chunks in flight, which bounds memory). ``workers=0`` decodes in this process.
    One DataLoader serves all groups, so worker start-up is paid once, not per group; with no
    groups, no worker is started at all. ``pin_memory`` (for CUDA) puts decoded images in page-locked
    memory, so their copy to the GPU can overlap the encoder's work on the previous batch.
    """
    groups = [list(g) for g in groups if len(g)]
    if not groups:
        return
    chunk_size = max(1, chunk_size)
    chunks = [g[i : i + chunk_size] for g in groups for i in range(0, len(g), chunk_size)]
    loader = DataLoader(
        DecodeDataset(paths, max_pixels), batch_sampler=chunks, num_workers=max(0, workers),
        collate_fn=collate_decoded, in_order=True, pin_memory=pin_memory,
    )
    batches = iter(loader)
    try:
        for group in groups:
            out: list[Decoded] = []
            while len(out) < len(group):
                out.extend(next(batches))
            if [item[0] for item in out] != group:
                raise RuntimeError("decoded images arrived out of order")  # cannot happen with in_order loading
            yield out
    finally:
        del batches  # shuts the workers down even when the consumer stops early (or crashed)


# ---- torch.distributed --------------------------------------------------------------------------
@dataclass(frozen=True)
class DistributedContext:
    """This process's place in a ``torchrun`` job: global rank, world size, rank on this node.

    Built from the environment torchrun sets, so the same command line works with and without it.
    """

    rank: int
    world_size: int
    local_rank: int

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> DistributedContext | None:
        """The context torchrun describes in RANK / WORLD_SIZE / LOCAL_RANK, or None for one process.

        ``WORLD_SIZE=1`` counts as single-process: there is nobody to split the work with, and no
        process group (or rendezvous) is needed.
        """
        env = os.environ if environ is None else environ
        if "RANK" not in env or "WORLD_SIZE" not in env:
            return None
        try:
            rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
            local = int(env.get("LOCAL_RANK", rank))
        except ValueError as exc:
            raise ValueError(f"malformed torch.distributed environment: {exc}") from None
        if world <= 1:
            return None
        if not 0 <= rank < world:
            raise ValueError(f"RANK={rank} outside 0..{world - 1}")
        return cls(rank, world, local)

    @property
    def is_main(self) -> bool:
        """Rank 0 merges the caches, scores every method and writes the outputs."""
        return self.rank == 0

    def owns(self, shard: int) -> bool:
        """Round-robin shard ownership: disjoint, covers every shard, balanced to within one shard."""
        return shard % self.world_size == self.rank

    def select_device(self, requested: str) -> str:
        """``auto`` / ``cuda`` -> ``cuda:LOCAL_RANK`` (one GPU per process) when CUDA is available.

        An explicit ``cuda:N`` or ``cpu`` is kept: the user chose it.
        """
        if requested in ("auto", "cuda"):
            if torch.cuda.is_available():
                return f"cuda:{self.local_rank % torch.cuda.device_count()}"
            return "cpu" if requested == "auto" else requested
        return requested

    def barrier(self) -> None:
        """Wait until every rank arrives (on the rank's own GPU with NCCL, so no device is guessed)."""
        import torch.distributed as dist

        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def _timeout() -> datetime.timedelta:
    value = os.environ.get("ABSCLIP_DIST_TIMEOUT")
    if not value:
        return DEFAULT_BARRIER_TIMEOUT
    try:
        return datetime.timedelta(seconds=float(value))
    except ValueError:
        raise ValueError(f"ABSCLIP_DIST_TIMEOUT must be a number of seconds, got {value!r}") from None


@contextlib.contextmanager
def process_group(context: DistributedContext | None, device: torch.device | str) -> Iterator[None]:
    """Initialise the default process group for ``context`` (no-op for None) and destroy it on exit.

    NCCL when this rank computes on a GPU, gloo otherwise (CPU runs, and tests). The group is only
    used for a barrier, but initialising it also checks that every rank joined the same job.
    """
    if context is None:
        yield
        return
    import torch.distributed as dist

    dev = torch.device(device)
    kwargs: dict[str, object] = {}
    if dev.type == "cuda":
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(dev)
        kwargs["device_id"] = dev
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=context.rank,
                            world_size=context.world_size, timeout=_timeout(), **kwargs)
    try:
        yield
    finally:
        dist.destroy_process_group()

"""Parallel evaluation: DataLoader decoding workers and data-parallel extraction under torchrun (CPU, gloo).

The reference is a plain single-process ``absclip eval`` with ``--workers 0``; a run with decoding
workers and a two-process torchrun run must give the same records, the same failed-image report
and (for torchrun) the same cached views, with each shard written once, by the rank that owns it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import absclip.cli as cli
from absclip.cache import CachedShard, ViewCache
from absclip.parallel import DecodeDataset, DistributedContext, collate_decoded, decode_groups
from absclip.views import ViewSet

METHODS = "clip,abs"
BAD = {"cat/broken.png", "dog/empty.png"}
# sorted samples: bird/0 bird/1 cat/0 | cat/1 cat/broken dog/0 | dog/1 dog/empty  (shards of 3)
SHARD_SIZE = 3
N_SHARDS = 3


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes, 6 readable images of different sizes, a corrupt file and an empty one."""
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(1)
    sizes = iter([(64, 48), (40, 90), (33, 33), (50, 50), (70, 40), (36, 60)])
    for name in ("bird", "cat", "dog"):
        (root / name).mkdir()
        for i in range(2):
            w, h = next(sizes)
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    (root / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but then nothing")
    (root / "dog" / "empty.png").write_bytes(b"")
    return root


def _args(root: Path, model: Path, desc: Path, out: Path, cache: Path, workers: int) -> list[str]:
    args = ["eval", "--dataset", "folder", "--root", root, "--descriptions", desc, "--methods", METHODS,
            "--seeds", "0,1", "--output-dir", out, "--model", f"openai:{model}", "--device", "cpu",
            "--cache-dir", cache / "text", "--view-cache", cache / "views", "--saliency", "uniform",
            "--crops", "2", "--batch-size", "2", "--shard-size", SHARD_SIZE, "--workers", workers]
    return [str(a) for a in args]


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def _failed(out: Path, root: Path) -> dict[str, str]:
    rows = [json.loads(line) for line in (out / "failed.jsonl").read_text().splitlines()]
    return {Path(r["path"]).relative_to(root).as_posix(): r["reason"] for r in rows}


@pytest.fixture(scope="module")
def reference(dataset_root: Path, descriptions: Path, tiny_openai_checkpoint: Path,
              tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out, cache = tmp_path_factory.mktemp("ref-out"), tmp_path_factory.mktemp("ref-cache")
    assert cli.main(_args(dataset_root, tiny_openai_checkpoint, descriptions, out, cache, workers=0)) == 0
    return out, cache


def test_reference_reports_bad_images(reference: tuple[Path, Path], dataset_root: Path) -> None:
    out, _ = reference
    failed = _failed(out, dataset_root)
    assert set(failed) == BAD
    assert failed["dog/empty.png"] == "empty file"
    assert all(r["n_samples"] == 6 and r["n_failed"] == 2 for r in _records(out))


# ---- DataLoader decoding --------------------------------------------------------------------------
def test_workers_match_in_process_decoding(reference: tuple[Path, Path], dataset_root: Path, descriptions: Path,
                                           tiny_openai_checkpoint: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    ref_out, _ = reference
    out = tmp_path / "out"
    assert cli.main(_args(dataset_root, tiny_openai_checkpoint, descriptions, out, tmp_path / "cache", workers=2)) == 0
    assert _records(out) == _records(ref_out)
    assert _failed(out, dataset_root) == _failed(ref_out, dataset_root)
    err = capsys.readouterr().err
    for bad in BAD:
        assert str(dataset_root / bad) in err  # reported by path, the run went on


def test_decode_dataset_never_raises(dataset_root: Path, tmp_path: Path) -> None:
    paths = [dataset_root / "bird" / "0.png", dataset_root / "cat" / "broken.png", tmp_path / "missing.png",
             dataset_root / "dog", dataset_root / "dog" / "empty.png"]
    items = [DecodeDataset(paths)[i] for i in range(len(paths))]
    assert [i for i, _, _ in items] == list(range(5))
    _, image, error = items[0]
    assert error is None and image is not None and image.dtype == torch.uint8 and image.shape == (3, 48, 64)
    assert [e for _, im, e in items[1:] if im is None] == [
        "corrupt or truncated PNG header", "file not found", "is a directory, not an image file", "empty file"]
    # variable-size images stay a list (default_collate would try to stack them)
    batch = collate_decoded([items[0], DecodeDataset([dataset_root / "bird" / "1.png"])[0]])
    assert [tuple(im.shape) for _, im, _ in batch] == [(3, 48, 64), (3, 90, 40)]


def test_decode_groups_keep_dataset_order(dataset_root: Path) -> None:
    paths = sorted(p for p in dataset_root.rglob("*.png"))
    groups = [range(0, 3), range(3, 3), range(5, 8), range(3, 5)]  # an empty group is skipped
    inline = list(decode_groups(paths, groups, workers=0, chunk_size=2))
    parallel = list(decode_groups(paths, groups, workers=2, chunk_size=1))
    assert [[i for i, _, _ in g] for g in parallel] == [[0, 1, 2], [5, 6, 7], [3, 4]]
    for a, b in zip(inline, parallel, strict=True):
        for (i, x, ex), (j, y, ey) in zip(a, b, strict=True):
            assert i == j and ex == ey and (x is None) == (y is None)
            assert x is None or torch.equal(x, y)
    assert list(decode_groups(paths, [], workers=2)) == []  # nothing to decode: no worker started


# ---- torch.distributed ------------------------------------------------------------------------------
def test_distributed_context_from_env() -> None:
    assert DistributedContext.from_env({}) is None
    assert DistributedContext.from_env({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}) is None
    ctx = DistributedContext.from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert ctx == DistributedContext(rank=3, world_size=4, local_rank=1) and not ctx.is_main
    assert ctx.select_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="RANK"):
        DistributedContext.from_env({"RANK": "4", "WORLD_SIZE": "4"})
    ranks = [DistributedContext(r, 3, r) for r in range(3)]
    owners = [[r.rank for r in ranks if r.owns(s)] for s in range(10)]
    assert all(len(o) == 1 for o in owners) and [o[0] for o in owners] == [s % 3 for s in range(10)]


def _shard(value: float, n: int = 2) -> CachedShard:
    return CachedShard(ViewSet(full=torch.full((n, 4), value)), list(range(n)), {})


def test_rank_manifests_merge(tmp_path: Path) -> None:
    key = {"k": 1}
    keys = [["a", "b"], ["c", "d"], ["e", "f"]]
    r0, r1 = ViewCache(tmp_path, key, 2, rank=0), ViewCache(tmp_path, key, 2, rank=1)
    r0.store(0, 0, keys[0], _shard(0.0))
    r1.store(1, 2, keys[1], _shard(1.0))
    r0.store(2, 4, keys[2], _shard(2.0))
    names = sorted(p.name for p in r0.directory.glob("manifest*.json"))
    assert names == ["manifest.rank0.json", "manifest.rank1.json"]  # ranks never write the shared manifest
    # an interrupted distributed run resumes from the per-rank manifests, in any process layout
    single = ViewCache(tmp_path, key, 2)
    assert single.completed == [0, 1, 2]
    loaded = single.load(1, keys[1])
    assert loaded is not None and torch.equal(loaded.views.full, torch.full((2, 4), 1.0))
    assert ViewCache(tmp_path, key, 2).merge() == [0, 1, 2]
    assert sorted(p.name for p in r0.directory.glob("manifest*.json")) == ["manifest.json"]
    shards = json.loads((r0.directory / "manifest.json").read_text())["shards"]
    assert {s: e["rank"] for s, e in shards.items()} == {"0": 0, "1": 1, "2": 0}
    # a stale entry (shard file since rewritten for other samples) is never paired with that file
    ViewCache(tmp_path, key, 2).store(1, 2, ["x", "y"], _shard(9.0))
    stale = ViewCache(tmp_path, key, 2)
    stale._manifest["shards"]["1"] = shards["1"]
    assert stale.load(1, keys[1]) is None


def _torchrun(args: list[str], timeout: float = 150) -> subprocess.CompletedProcess[str]:
    """``python -m torch.distributed.run`` in its own session, so a hang kills every rank, not just the agent."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "absclip", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ABSCLIP_DIST_TIMEOUT": "120"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"torchrun timed out\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


@pytest.mark.slow
def test_torchrun_matches_single_process(reference: tuple[Path, Path], dataset_root: Path, descriptions: Path,
                                         tiny_openai_checkpoint: Path, tmp_path: Path) -> None:
    ref_out, ref_cache = reference
    out, cache = tmp_path / "out", tmp_path / "cache"
    proc = _torchrun(_args(dataset_root, tiny_openai_checkpoint, descriptions, out, cache, workers=1))
    assert proc.returncode == 0, proc.stderr[-4000:]

    ref, got = _records(ref_out), _records(out)
    assert [(r["method"], r["seed"], r["n_samples"], r["n_failed"]) for r in got] == \
        [(r["method"], r["seed"], r["n_samples"], r["n_failed"]) for r in ref]
    for a, b in zip(got, ref, strict=True):
        assert a["metrics"] == pytest.approx(b["metrics"], abs=1e-9)
    assert _failed(out, dataset_root) == _failed(ref_out, dataset_root)
    for bad in BAD:
        assert str(dataset_root / bad) in proc.stderr  # rank 0 reports the bad files (read from the manifests)
    assert proc.stderr.count("results in") == 1  # only rank 0 writes and reports

    # clip+abs, 2 seeds: the full-view config is shared by the seeds (seed-free), abs has one per seed
    dirs = sorted(d for d in (cache / "views").iterdir() if d.is_dir())
    assert [d.name for d in dirs] == sorted(d.name for d in (ref_cache / "views").iterdir() if d.is_dir())
    assert len(dirs) == 2
    for d in dirs:
        assert not list(d.glob("manifest.rank*.json")) and not list(d.glob("*.tmp"))  # merged, then removed
        shards = json.loads((d / "manifest.json").read_text())["shards"]
        assert sorted(map(int, shards)) == list(range(N_SHARDS))  # every shard exactly once
        assert {int(s): e["rank"] for s, e in shards.items()} == {s: s % 2 for s in range(N_SHARDS)}
        files = [e["file"] for e in shards.values()]
        assert len(set(files)) == N_SHARDS and sorted(files) == sorted(p.name for p in d.glob("shard-*"))
        ref_shards = json.loads((ref_cache / "views" / d.name / "manifest.json").read_text())["shards"]
        for s, e in shards.items():
            assert (e["start"], e["stop"], e["keys"], e["failed"]) == \
                (ref_shards[s]["start"], ref_shards[s]["stop"], ref_shards[s]["keys"], ref_shards[s]["failed"])
        key = json.loads((d / "manifest.json").read_text())["key"]
        mine, theirs = ViewCache(cache / "views", key, SHARD_SIZE), ViewCache(ref_cache / "views", key, SHARD_SIZE)
        samples = sorted(p for p in dataset_root.rglob("*.png"))
        for s in range(N_SHARDS):
            keys = [str(p) for p in samples[s * SHARD_SIZE : (s + 1) * SHARD_SIZE]]
            a, b = mine.load(s, keys), theirs.load(s, keys)
            assert a is not None and b is not None and a.ok == b.ok
            for name in ("full", "raw", "feature"):
                x, y = getattr(a.views, name), getattr(b.views, name)
                assert (x is None) == (y is None)
                assert x is None or torch.allclose(x, y, atol=1e-5)

    # resume: a second torchrun over the complete cache extracts nothing and reproduces the records
    written = {p: p.stat().st_mtime_ns for p in (cache / "views").rglob("shard-*")}
    again = _torchrun(_args(dataset_root, tiny_openai_checkpoint, descriptions, tmp_path / "out2", cache, workers=1))
    assert again.returncode == 0, again.stderr[-4000:]
    assert _records(tmp_path / "out2") == got
    assert {p: p.stat().st_mtime_ns for p in (cache / "views").rglob("shard-*")} == written

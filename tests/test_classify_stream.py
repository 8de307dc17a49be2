"""`absclip classify` at scale: streamed output that survives SIGKILL and resumes, decode workers,
torchrun (2 CPU processes, gloo) and the guards around existing output."""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import absclip.cli as cli
from absclip.labelling import complete_lines, parts_dir

N_IMAGES = 240


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few hundred tiny images in nested folders, plus two unreadable files."""
    root = tmp_path_factory.mktemp("many")
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):
        folder = root / f"d{i % 7}"
        folder.mkdir(exist_ok=True)
        h, w = (int(v) for v in rng.integers(8, 40, 2))
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{i:04d}.png")
    (root / "d3" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnothing more")
    (root / "d5" / "empty.jpg").write_bytes(b"")
    return root


def _args(root: Path, model: Path, cache: Path, *extra: object) -> list[str]:
    return [str(a) for a in ("classify", root, "--classes", "cat,dog,bird", "--model", f"openai:{model}",
                             "--device", "cpu", "--cache-dir", cache, "--batch-size", "4", "--top-k", "2",
                             "--workers", "0", *extra)]


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def reference(many: Path, tiny_openai_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("ref") / "labels.jsonl"
    assert cli.main(_args(many, tiny_openai_checkpoint, out.parent / "cache", "--output", out)) == 0
    records = _lines(out)
    assert not parts_dir(out).exists()  # merged, then removed
    return records


def test_reference_has_every_input_once_in_input_order(reference: list[dict], many: Path) -> None:
    paths = [r["path"] for r in reference]
    assert len(paths) == N_IMAGES + 2 == len(set(paths))
    assert paths == sorted(paths)  # discovery order: sorted walk
    errors = {Path(r["path"]).name: r["error"] for r in reference if r["error"]}
    assert set(errors) == {"broken.png", "empty.jpg"} and errors["empty.jpg"] == "empty file"


def test_sigkill_at_a_random_point_then_resume(reference: list[dict], many: Path, tiny_openai_checkpoint: Path,
                                               tmp_path: Path) -> None:
    out = tmp_path / "labels.jsonl"
    part = parts_dir(out) / "rank-0.jsonl"
    args = _args(many, tiny_openai_checkpoint, tmp_path / "cache", "--output", out)
    target = random.Random(os.getpid()).randrange(8, N_IMAGES // 2)  # records written before the kill
    proc = subprocess.Popen([sys.executable, "-m", "absclip", *args[0:]], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if part.exists() and part.stat().st_size and len(complete_lines(part)[0]) >= target:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert not out.exists()  # nothing final yet
    with part.open("ab") as handle:  # as if the kill had cut a line in half
        handle.write(b'{"path": "half-writ')
    partial, _ = complete_lines(part)
    assert len(partial) >= target

    assert cli.main(args) == 2  # refused without --resume / --overwrite: the parts of the killed run exist
    assert cli.main([*args, "--resume", "--overwrite"]) == 2  # contradictory
    assert cli.main([*args, "--resume"]) == 0
    resumed = _lines(out)
    assert [r["path"] for r in resumed] == [r["path"] for r in reference]  # every input once, in order
    assert [(r["label"], r["error"]) for r in resumed] == [(r["label"], r["error"]) for r in reference]
    for a, b in zip(resumed, reference, strict=True):
        assert [t["label"] for t in a["top_k"]] == [t["label"] for t in b["top_k"]]
        assert [t["score"] for t in a["top_k"]] == pytest.approx([t["score"] for t in b["top_k"]], abs=1e-6)
    # a resume of a finished run does nothing and keeps the file
    before = out.read_bytes()
    assert cli.main([*args, "--resume"]) == 0
    assert out.read_bytes() == before


def test_existing_output_is_never_silently_replaced(reference: list[dict], many: Path, tiny_openai_checkpoint: Path,
                                                    tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "labels.jsonl"
    out.write_text("precious\n")
    args = _args(many / "d0", tiny_openai_checkpoint, tmp_path / "cache", "--output", out)
    assert cli.main(args) == 2
    assert "exists: pass --resume to continue that run, or --overwrite" in capsys.readouterr().err
    assert out.read_text() == "precious\n"
    assert cli.main([*args, "--overwrite"]) == 0
    assert [r["path"] for r in _lines(out)] == [r["path"] for r in reference if Path(r["path"]).parent.name == "d0"]


def test_csv_made_from_the_merged_records_and_resumable(reference: list[dict], many: Path,
                                                        tiny_openai_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "labels.csv"
    args = _args(many, tiny_openai_checkpoint, tmp_path / "cache", "--output", out, "--workers", "2")
    assert cli.main(args) == 0
    rows = list(csv.DictReader(out.open(newline="", encoding="utf-8")))
    assert [r["path"] for r in rows] == [r["path"] for r in reference]
    assert [r["label"] or None for r in rows] == [r["label"] for r in reference]
    assert [r["error"] or None for r in rows] == [r["error"] for r in reference]
    before = out.read_bytes()
    assert cli.main([*args, "--resume"]) == 0  # a finished CSV is read back: nothing is redone
    assert out.read_bytes() == before


def test_files_from_and_stdout_escaping(many: Path, tiny_openai_checkpoint: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    odd = tmp_path / "new\nline\tand tab.png"
    Image.new("RGB", (20, 20), (10, 200, 30)).save(odd)
    listing = tmp_path / "list.txt"
    listing.write_text(f"{many / 'd1' / '0001.png'}\n\n")
    capsys.readouterr()
    assert cli.main(_args(odd, tiny_openai_checkpoint, tmp_path / "cache", "--files-from", listing)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2  # one line per image: the newline in the name cannot forge a line
    assert lines[0].startswith(str(tmp_path / "new\\nline\\tand tab.png") + "\t")
    assert lines[1].startswith(str(many / "d1" / "0001.png") + "\t")


def _torchrun(args: list[str], nproc: int = 2, timeout: float = 150) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
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
def test_torchrun_matches_one_process_and_resumes_with_another_count(reference: list[dict], many: Path,
                                                                     tiny_openai_checkpoint: Path,
                                                                     tmp_path: Path) -> None:
    out = tmp_path / "labels.jsonl"
    args = _args(many, tiny_openai_checkpoint, tmp_path / "cache", "--output", out)
    proc = _torchrun(args)
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = _lines(out)
    assert [r["path"] for r in got] == [r["path"] for r in reference]
    assert [(r["label"], r["error"]) for r in got] == [(r["label"], r["error"]) for r in reference]
    assert proc.stderr.count("results in") == 1  # rank 0 merges and reports

    # an interrupted single-process run (its part holds the first 50 records, the last cut in half)
    # resumed by two processes
    out2 = tmp_path / "again.jsonl"
    part = parts_dir(out2) / "rank-0.jsonl"
    part.parent.mkdir()
    part.write_text("".join(json.dumps(r) + "\n" for r in reference[:50]) + '{"path": "cut')
    resumed = _torchrun([*args[:-1], str(out2), "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert [(r["path"], r["label"]) for r in _lines(out2)] == [(r["path"], r["label"]) for r in reference]
    assert "(50 done before)" in resumed.stderr


def test_ray_engine_matches_a_single_process_run(reference: list[dict], many: Path, tiny_openai_checkpoint: Path,
                                                 tmp_path: Path) -> None:
    """A local Ray (2 CPUs, 2 actors) labels exactly as one process does, streamed and resumable."""
    import ray  # the [ray] extra: .ci/run installs it

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        out = tmp_path / "labels.parquet"
        args = _args(many, tiny_openai_checkpoint, tmp_path / "cache", "--output", out, "--engine", "ray",
                     "--ray-actors", "2")
        assert cli.main(args) == 0
        import pyarrow.parquet as pq

        got = pq.read_table(out).to_pylist()
        assert [r["path"] for r in got] == [r["path"] for r in reference]
        assert [(r["label"], r["error"]) for r in got] == [(r["label"], r["error"]) for r in reference]
        for a, b in zip(got, reference, strict=True):
            assert [t["score"] for t in a["top_k"]] == pytest.approx([t["score"] for t in b["top_k"]], abs=1e-6)
        before = out.read_bytes()
        assert cli.main([*args, "--resume"]) == 0  # finished: nothing is redone
        assert out.read_bytes() == before
    finally:
        ray.shutdown()


def _write_shards(many: Path, tmp_path: Path, per_shard: int = 60) -> tuple[str, list[Path], list[int]]:
    """The first 120 images of ``many`` as two WebDataset shards, with a .cls label per sample."""
    import tarfile

    images = sorted(many.rglob("*.png"))[:120]
    labels = [i % 3 for i in range(len(images))]
    for s in range(2):
        with tarfile.open(tmp_path / f"shard-{s:03d}.tar", "w") as tar:
            for i in range(s * per_shard, (s + 1) * per_shard):
                tar.add(images[i], arcname=f"sample{i:05d}.png")
                cls = tmp_path / "cls.txt"
                cls.write_text(str(labels[i]))
                tar.add(cls, arcname=f"sample{i:05d}.cls")
    return str(tmp_path / "shard-{000..001}.tar"), images, labels


def test_webdataset_input_labels_like_the_folder(reference: list[dict], many: Path, tiny_openai_checkpoint: Path,
                                                 tmp_path: Path) -> None:
    pattern, images, _ = _write_shards(many, tmp_path)
    out = tmp_path / "wds.jsonl"
    args = _args(many, tiny_openai_checkpoint, tmp_path / "cache", "--output", out, "--webdataset", pattern,
                 "--workers", "2")
    assert cli.main([args[0], *args[2:]]) == 0  # the shards are the only input
    got = _lines(out)
    assert [r["path"] for r in got] == [f"{tmp_path}/shard-{i // 60:03d}.tar::sample{i:05d}.png" for i in range(120)]
    by_path = {r["path"]: r for r in reference}
    for record, image in zip(got, images, strict=True):
        ref = by_path[str(image)]
        assert record["label"] == ref["label"]
        assert record["score"] == pytest.approx(ref["score"], abs=1e-6)


def test_webdataset_eval_matches_the_folder(many: Path, tiny_openai_checkpoint: Path, tmp_path: Path) -> None:
    """`eval --dataset webdataset` scores the shards' samples exactly as the same images in class folders."""
    pattern, images, labels = _write_shards(many, tmp_path)
    folder = tmp_path / "folder"
    for image, label in zip(images, labels, strict=True):
        (folder / f"c{label}").mkdir(parents=True, exist_ok=True)
        (folder / f"c{label}" / image.name).write_bytes(image.read_bytes())
    classes = tmp_path / "classes.txt"
    classes.write_text("c0\nc1\nc2\n")
    common = ["--methods", "clip", "--model", f"openai:{tiny_openai_checkpoint}", "--device", "cpu",
              "--cache-dir", str(tmp_path / "cache"), "--classes", str(classes), "--workers", "0"]
    assert cli.main(["eval", "--dataset", "webdataset", "--root", pattern, "--output-dir", str(tmp_path / "a"),
                     *common]) == 0
    assert cli.main(["eval", "--dataset", "folder", "--root", str(folder), "--output-dir", str(tmp_path / "b"),
                     *common]) == 0
    a, b = (_lines(tmp_path / d / "results.jsonl") for d in ("a", "b"))
    assert a[0]["n_samples"] == b[0]["n_samples"] == 120
    assert a[0]["metrics"] == pytest.approx(b[0]["metrics"])


def test_classify_writes_a_report_with_its_plans(many: Path, tiny_openai_checkpoint: Path, tmp_path: Path,
                                                 descriptions: Path) -> None:
    out, page, plans = tmp_path / "labels.jsonl", tmp_path / "report.html", tmp_path / "plans.jsonl"
    args = _args(many / "d2", tiny_openai_checkpoint, tmp_path / "cache", "--output", out, "--report", page,
                 "--save-plans", plans, "--method", "abs", "--descriptions", descriptions, "--saliency", "uniform",
                 "--crops", "3")
    assert cli.main(args) == 0
    html = page.read_text(encoding="utf-8")
    assert html.lstrip().lower().startswith("<!doctype html")
    records = _lines(out)
    for r in records:
        assert Path(r["path"]).name in html
    assert len(_lines(plans)) == sum(1 for r in records if not r["error"])

"""A quiet, fast first run: with no weights and no network, `absclip classify` says so in one line within
seconds, instead of about 50 s of hub retries with each warning printed twice; transformers' loading
reports stay out of the output unless asked for with -v, which also works after the subcommand.

"No network" is a hub endpoint on 127.0.0.1 with nothing listening (HF_ENDPOINT), and an empty
HF_HOME stands for "no weights": nothing leaves this machine.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from absclip.backbones.open_clip import hub_access, hub_unreachable_reason
from absclip.cli import build_parser

# A whole `absclip` process: about 4.5 s here, nearly all of it importing torch, open_clip and transformers
# (more while other tests load the machine). huggingface_hub's back-off alone is 23 s per missing file
# (1+2+4+8+8 s), so a process under this bound made no retries.
FAST = 15.0
# The loading itself, in a process that has imported everything already: one refused connection
LOAD_FAST = 3.0


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def offline_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_", "ABSCLIP_"))}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{_closed_port()}", HF_HOME=str(tmp_path / "hf-home"),
               HF_HUB_DISABLE_TELEMETRY="1")
    return env


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(2):
        Image.new("RGB", (40, 30), (100 * i, 50, 200)).save(folder / f"{i}.jpg")
    return folder


def _absclip(args: list[str], env: dict[str, str], cwd: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "absclip", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=120)
    return done, time.monotonic() - start


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_offline_first_run_is_one_line_and_fast(offline_env: dict[str, str], photos: Path) -> None:
    done, seconds = _absclip(["classify", str(photos), "--classes", "cat,dog,bird"], offline_env, photos.parent)
    lines = _lines(done.stderr)
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1, lines
    assert lines[0].startswith("absclip: error: weights for open_clip ViT-B-16 / openai are not on this machine")
    assert f"{offline_env['HF_ENDPOINT']} did not answer" in lines[0]
    assert str(Path(offline_env["HF_HOME"]) / "hub") in lines[0]  # the cache it searched
    assert done.stdout == ""
    assert seconds < FAST, f"the offline first run took {seconds:.1f} s"


def test_verbose_after_the_subcommand_logs_each_line_once(offline_env: dict[str, str], photos: Path) -> None:
    done, seconds = _absclip(["classify", str(photos), "--classes", "cat,dog,bird", "-v"], offline_env,
                             photos.parent)
    lines = _lines(done.stderr)
    assert done.returncode == 2
    assert any("Loaded built-in ViT-B-16 model config" in line for line in lines), lines  # -v took effect
    assert len(lines) == len(set(lines)), lines  # the hub's own handler no longer repeats our lines
    assert not any("Retrying in" in line for line in lines), lines
    assert lines[-1].startswith("absclip: error: weights for open_clip ViT-B-16")
    assert seconds < FAST


def test_offline_dino_is_one_line_and_fast(offline_env: dict[str, str], photos: Path,
                                           tiny_openai_checkpoint: Path, descriptions: Path) -> None:
    done, seconds = _absclip(["classify", str(photos), "--classes", "cat,dog,bird", "--method", "abs",
                              "--descriptions", str(descriptions), "--model", f"openai:{tiny_openai_checkpoint}",
                              "--device", "cpu", "--saliency", "dinov2"], offline_env, photos.parent)
    lines = _lines(done.stderr)
    assert done.returncode == 2 and len(lines) == 1, lines
    assert lines[0].startswith("absclip: error: saliency model facebook/dinov2-with-registers-base is not on this")
    assert "--saliency dinov2:/path/to/dir" in lines[0]
    assert seconds < FAST


@pytest.mark.parametrize("spec", ["open_clip:ViT-B-16", "hf:openai/clip-vit-base-patch16"])
def test_offline_loaders_fail_at_once(spec: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    from absclip.backbones import create_backbone
    from absclip.errors import WeightsNotFoundError

    endpoint = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    start = time.monotonic()
    with pytest.raises(WeightsNotFoundError, match=f"{endpoint} did not answer: ConnectError; searched the cache at "
                                                   f"{tmp_path}"):
        create_backbone(spec, pretrained="openai", device="cpu", cache_dir=str(tmp_path))
    assert time.monotonic() - start < LOAD_FAST
    assert constants.HF_HUB_OFFLINE is False


def test_verbose_flag_goes_before_or_after_the_subcommand() -> None:
    parser = build_parser()
    base = ["classify", "x.jpg", "--classes", "a,b"]
    assert parser.parse_args(base).verbose is False
    assert parser.parse_args(["-v", *base]).verbose is True
    assert parser.parse_args([*base, "-v"]).verbose is True
    assert parser.parse_args(["report", "r.jsonl", "-o", "r.html", "--verbose"]).verbose is True


def test_cached_hub_model_loads_with_the_hub_unreachable(tiny_hf_dir: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline is not "no weights": a model in the hub cache still loads, without waiting on retries."""
    from huggingface_hub import constants

    from absclip.backbones.hf_clip import load_hf_clip

    repo = tmp_path / "cache" / "models--someone--tiny-clip"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for f in tiny_hf_dir.iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    start = time.monotonic()
    backbone = load_hf_clip("someone/tiny-clip", torch.device("cpu"), torch.float32, cache_dir=str(tmp_path / "cache"))
    assert time.monotonic() - start < LOAD_FAST
    assert backbone.embed_dim == 24
    assert constants.HF_HUB_OFFLINE is False  # offline only while loading


def test_hub_probe_makes_one_short_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    """A hub that accepts the connection but never answers costs the probe's timeout once, no more."""
    from huggingface_hub import constants

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        start = time.monotonic()
        reason = hub_unreachable_reason(timeout=0.5)
        assert time.monotonic() - start < 3
        assert reason is not None and "did not answer within 0.5 s" in reason and "ABSCLIP_HUB_TIMEOUT" in reason
        with hub_access(timeout=0.5) as why:
            assert why == reason
            assert constants.HF_HUB_OFFLINE is True
        assert constants.HF_HUB_OFFLINE is False


def _dino_with_pooler(directory: Path) -> Path:
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    model = ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=224,
                               intermediate_size=64, patch_size=16), add_pooling_layer=True)
    model.save_pretrained(directory)  # as facebook/dino-vitb16 ships: with pooler weights
    return directory


def test_dino_loads_without_a_pooler_report(tmp_path: Path) -> None:
    import transformers
    from transformers import ViTModel

    from absclip.attention.dino import load_hf_vit_saliency

    directory = _dino_with_pooler(tmp_path / "dino")
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    handler = Collect()
    root = logging.getLogger("transformers")
    root.addHandler(handler)
    before = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_warning()
    try:
        # the plain load reports the dropped pooler, so this collector would see it
        ViTModel.from_pretrained(directory, add_pooling_layer=False)
        assert any("LOAD REPORT" in m and "pooler" in m for m in records), records
        records.clear()
        source = load_hf_vit_saliency(str(directory), torch.device("cpu"))
        assert not any("LOAD REPORT" in m or "UNEXPECTED" in m for m in records), records
    finally:
        root.removeHandler(handler)
        transformers.logging.set_verbosity(before)
    assert ViTModel._keys_to_ignore_on_load_unexpected is None  # the switch was for that load only
    reference = ViTModel.from_pretrained(directory)
    assert source.model.pooler is None
    for name, weight in source.model.state_dict().items():  # every weight loaded, none re-initialised
        assert torch.equal(weight, reference.state_dict()[name]), name


def test_quiet_run_shows_no_loading_noise(offline_env: dict[str, str], photos: Path, tmp_path: Path,
                                          tiny_openai_checkpoint: Path, descriptions: Path) -> None:
    dino = _dino_with_pooler(tmp_path / "dino")
    done, _ = _absclip(["classify", str(photos), "--classes", "cat,dog,bird", "--method", "abs", "--crops", "3",
                        "--descriptions", str(descriptions), "--model", f"openai:{tiny_openai_checkpoint}",
                        "--device", "cpu", "--saliency", f"dino:{dino}"], offline_env, photos.parent)
    assert done.returncode == 0, done.stderr
    lines = _lines(done.stderr)
    assert len(lines) == 1 and lines[0].startswith("absclip: classified 2 images"), lines
    assert len(_lines(done.stdout)) == 2

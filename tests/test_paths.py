"""One cache-root rule: every cache absclip writes resolves under ``absclip.paths.cache_root()``."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from absclip.describe import DescribeSettings, default_cache_dir
from absclip.paths import cache_dir, cache_root
from absclip.text import TextEmbedder


def text_cache_file_dir(embedder: TextEmbedder) -> Path:
    path = embedder._cache_path(["a photo of a cat."])
    assert path is not None
    return path.parent


@pytest.fixture
def stub_backbone() -> SimpleNamespace:
    # Resolving a cache path only needs a name, a dtype and weights to fingerprint, not a real model.
    return SimpleNamespace(name="stub", dtype=torch.float32, model=torch.nn.Linear(2, 2))


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("ABSCLIP_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def assert_all_caches_under(root: Path, stub_backbone: SimpleNamespace) -> None:
    assert cache_root() == root
    assert cache_dir("views") == root / "views"
    assert text_cache_file_dir(TextEmbedder(stub_backbone)) == root / "text"  # type: ignore[arg-type]
    assert default_cache_dir() == root / "describe"
    assert DescribeSettings().resolved_cache_dir() == root / "describe"


def test_absclip_cache_wins_over_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                     stub_backbone: SimpleNamespace) -> None:
    monkeypatch.setenv("ABSCLIP_CACHE", str(tmp_path / "root"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert_all_caches_under(tmp_path / "root", stub_backbone)


def test_xdg_cache_home_is_honoured_by_every_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                   stub_backbone: SimpleNamespace) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert_all_caches_under(tmp_path / "xdg" / "absclip", stub_backbone)


def test_default_is_home_cache(tmp_path: Path, stub_backbone: SimpleNamespace) -> None:
    assert_all_caches_under(tmp_path / "home" / ".cache" / "absclip", stub_backbone)


def test_empty_variables_count_as_unset(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                        stub_backbone: SimpleNamespace) -> None:
    monkeypatch.setenv("ABSCLIP_CACHE", "")
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    assert_all_caches_under(tmp_path / "home" / ".cache" / "absclip", stub_backbone)


def test_user_home_is_expanded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ABSCLIP_CACHE", "~/absclip-cache")
    assert cache_root() == tmp_path / "home" / "absclip-cache"
    monkeypatch.delenv("ABSCLIP_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", "~/xdg")
    assert cache_root() == tmp_path / "home" / "xdg" / "absclip"


def test_explicit_cache_dir_still_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                            stub_backbone: SimpleNamespace) -> None:
    monkeypatch.setenv("ABSCLIP_CACHE", str(tmp_path / "root"))
    embedder = TextEmbedder(stub_backbone, cache_dir=tmp_path / "mine")  # type: ignore[arg-type]
    assert text_cache_file_dir(embedder) == tmp_path / "mine" / "text"
    assert TextEmbedder(stub_backbone, cache_dir="").cache_dir is None  # type: ignore[arg-type]
    assert DescribeSettings(cache_dir=tmp_path / "answers").resolved_cache_dir() == tmp_path / "answers"

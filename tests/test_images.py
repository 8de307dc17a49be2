"""Image discovery and decoding: every odd format decodes correctly, every bad file is reported."""

from __future__ import annotations

import os
import pickle
import struct
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from absclip.errors import AbsclipError, InputFileError
from absclip.images import (
    IMAGE_EXTENSIONS,
    ImageLoadError,
    discover_images,
    image_to_tensor,
    iter_loaded,
    load_image,
    to_rgb,
    walk_image_files,
)

RED = (255, 0, 0)
WHITE = (255, 255, 255)


def px(img: Image.Image, xy: tuple[int, int] = (0, 0)) -> tuple[int, ...]:
    assert img.mode == "RGB"
    return tuple(int(v) for v in np.asarray(img)[xy[1], xy[0]])


def pillow_mode(path: Path) -> str:
    """The mode Pillow itself opens a file in (the case load_image must handle)."""
    with Image.open(path) as img:
        return img.mode


def frame_count(path: Path) -> int:
    with Image.open(path) as img:
        return int(getattr(img, "n_frames", 1))


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def save(img: Image.Image, path: Path, **kwargs: object) -> Path:
    img.save(path, **kwargs)
    return path


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png16(path: Path, arr: np.ndarray, colour_type: int) -> Path:
    """A 16-bit PNG written by hand: Pillow cannot save 16-bit RGB(A) itself."""
    height, width = arr.shape[:2]
    rows = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(rows))
        + png_chunk(b"IEND", b"")
    )
    return touch(path, data)


def noise(height: int, width: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


# --------------------------------------------------------------------------------------------
# Extensions and discovery
# --------------------------------------------------------------------------------------------


def test_image_extensions_are_lowercase_dotted_and_cover_common_formats() -> None:
    assert all(e.startswith(".") and e == e.lower() for e in IMAGE_EXTENSIONS)
    for ext in (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".jfif"):
        assert ext in IMAGE_EXTENSIONS
    assert ".txt" not in IMAGE_EXTENSIONS


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    for rel in ["b.jpg", "a.PNG", "c.txt", "sub/z.jpeg", "sub/deeper/y.gif", ".hidden.jpg", ".cache/x.jpg"]:
        touch(root / rel)
    return root


def test_discover_sorts_recurses_filters_and_skips_hidden(tree: Path) -> None:
    found = discover_images([tree])
    assert [p.relative_to(tree).as_posix() for p in found] == [
        "a.PNG",
        "b.jpg",
        "sub/deeper/y.gif",
        "sub/z.jpeg",
    ]


def test_discover_non_recursive_stays_at_top_level(tree: Path) -> None:
    found = discover_images([tree], recursive=False)
    assert [p.name for p in found] == ["a.PNG", "b.jpg"]


def test_discover_keeps_argument_order_explicit_files_and_removes_duplicates(
    tree: Path, tmp_path: Path
) -> None:
    notes = touch(tmp_path / "notes.txt")
    hidden = tree / ".hidden.jpg"
    found = discover_images([notes, tree / "sub", tree / "b.jpg", hidden, str(tree), notes])
    names = [p.name for p in found]
    # notes.txt and the hidden file were named explicitly, so they are kept; b.jpg appears once,
    # at its first (explicit) position, and the directory's other images follow in sorted order.
    assert names == ["notes.txt", "y.gif", "z.jpeg", "b.jpg", ".hidden.jpg", "a.PNG"]


def test_walk_image_files_takes_its_own_extension_rule(tree: Path) -> None:
    assert walk_image_files(tree) == discover_images([tree])
    found = walk_image_files(str(tree), extensions={".jpg", ".jpeg"})
    assert [p.relative_to(tree).as_posix() for p in found] == ["b.jpg", "sub/z.jpeg"]
    assert [p.name for p in walk_image_files(tree, recursive=False, extensions={".png"})] == ["a.PNG"]


def test_discover_is_deterministic(tree: Path) -> None:
    assert discover_images([tree]) == discover_images([tree])


def test_discover_missing_path_raises_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "img.jpg"
    with pytest.raises(InputFileError, match="nope"):
        discover_images([tmp_path, missing])


@pytest.mark.skipif(sys.platform == "win32", reason="symlinks need privileges on Windows")
def test_discover_survives_symlink_cycles(tmp_path: Path) -> None:
    touch(tmp_path / "d" / "a.jpg")
    os.symlink(tmp_path / "d", tmp_path / "d" / "loop")
    found = discover_images([tmp_path / "d"])
    assert [p.name for p in found] == ["a.jpg"]


# --------------------------------------------------------------------------------------------
# Decoding odd formats
# --------------------------------------------------------------------------------------------


def test_plain_rgb_jpeg(tmp_path: Path) -> None:
    img = load_image(save(Image.new("RGB", (31, 17), (0, 0, 255)), tmp_path / "b.jpg", quality=95))
    assert img.mode == "RGB" and img.size == (31, 17)
    r, g, b = px(img, (5, 5))
    assert r < 10 and g < 10 and b > 245


def test_cmyk_jpeg(tmp_path: Path) -> None:
    white = load_image(save(Image.new("CMYK", (8, 8), (0, 0, 0, 0)), tmp_path / "w.jpg"))
    red = load_image(save(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), tmp_path / "r.jpg"))
    assert white.mode == red.mode == "RGB"
    assert all(v >= 253 for v in px(white))
    r, g, b = px(red)
    assert r >= 250 and g <= 5 and b <= 5


def test_16bit_grey_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    arr = np.array([[0, 32768, 65535, 1000, 257]], dtype=np.uint16)
    path = save(Image.fromarray(arr), tmp_path / "g16.png")
    assert pillow_mode(path) == "I;16"  # what Pillow 13 gives; convert("RGB") would clip
    img = load_image(path)
    assert img.size == (5, 1)
    assert [px(img, (x, 0))[0] for x in range(5)] == [0, 128, 255, 4, 1]
    assert px(img, (1, 0)) == (128, 128, 128)


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I;16L"])
def test_16bit_modes_in_memory(mode: str) -> None:
    dtype = ">u2" if mode == "I;16B" else "<u2"
    img = Image.frombytes(mode, (3, 1), np.array([65535, 32768, 0], dtype=dtype).tobytes())
    rgb = to_rgb(img)
    assert [px(rgb, (x, 0))[0] for x in range(3)] == [255, 128, 0]


def test_16bit_pgm_decodes_as_mode_I_and_is_scaled(tmp_path: Path) -> None:
    path = touch(tmp_path / "g.pgm", b"P5 3 1 65535\n" + np.array([0, 32768, 65535], dtype=">u2").tobytes())
    assert pillow_mode(path) == "I"
    img = load_image(path)
    assert [px(img, (x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_mode_I_outside_16bit_range_is_stretched() -> None:
    img = Image.fromarray(np.array([[-100, 0, 100]], dtype=np.int32))
    assert img.mode == "I"
    assert [px(to_rgb(img), (x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_16bit_rgb_png(tmp_path: Path) -> None:
    arr = np.array([[[65535, 32768, 0], [0, 0, 65535]]], dtype=np.uint16)
    img = load_image(write_png16(tmp_path / "rgb16.png", arr, colour_type=2))
    assert img.size == (2, 1)
    assert px(img, (0, 0)) == (255, 128, 0)
    assert px(img, (1, 0)) == (0, 0, 255)


def test_16bit_rgba_png_alpha_is_composited(tmp_path: Path) -> None:
    arr = np.array([[[65535, 0, 0, 0], [65535, 0, 0, 65535]]], dtype=np.uint16)
    img = load_image(write_png16(tmp_path / "rgba16.png", arr, colour_type=6))
    assert px(img, (0, 0)) == WHITE
    assert px(img, (1, 0)) == RED


def test_float_tiff_in_unit_range_scaled_by_255(tmp_path: Path) -> None:
    arr = np.array([[0.0, 0.5, 1.0, 0.25]], dtype=np.float32)
    path = save(Image.fromarray(arr), tmp_path / "f.tif")
    assert pillow_mode(path) == "F"
    img = load_image(path)
    assert [px(img, (x, 0))[0] for x in range(4)] == [0, 128, 255, 64]


def test_float_outside_unit_range_is_min_max_stretched_and_nan_safe() -> None:
    img = Image.fromarray(np.array([[-1.0, 0.0, 3.0, np.nan, np.inf]], dtype=np.float32))
    assert [px(to_rgb(img), (x, 0))[0] for x in range(5)] == [0, 64, 255, 0, 255]


def test_one_bit_bmp(tmp_path: Path) -> None:
    src = Image.new("1", (9, 4), 0)
    src.putpixel((3, 2), 1)
    img = load_image(save(src, tmp_path / "bw.bmp"))
    assert img.size == (9, 4)
    assert px(img, (3, 2)) == WHITE and px(img, (0, 0)) == (0, 0, 0)


def test_grey_png(tmp_path: Path) -> None:
    img = load_image(save(Image.new("L", (5, 6), 77), tmp_path / "l.png"))
    assert img.size == (5, 6) and px(img) == (77, 77, 77)


def test_grey_alpha_png(tmp_path: Path) -> None:
    src = Image.new("LA", (2, 1), (40, 255))
    src.putpixel((1, 0), (40, 0))
    img = load_image(save(src, tmp_path / "la.png"))
    assert px(img, (0, 0)) == (40, 40, 40)
    assert px(img, (1, 0)) == WHITE


def _palette_image() -> Image.Image:
    img = Image.new("P", (3, 1))
    img.putpalette([12, 34, 56, 200, 100, 50, 0, 0, 0] + [0] * (256 - 3) * 3)
    img.putdata([0, 1, 2])
    return img


def test_palette_png_exact_colours(tmp_path: Path) -> None:
    img = load_image(save(_palette_image(), tmp_path / "p.png"))
    assert [px(img, (x, 0)) for x in range(3)] == [(12, 34, 56), (200, 100, 50), (0, 0, 0)]


def test_palette_png_with_transparent_index(tmp_path: Path) -> None:
    path = save(_palette_image(), tmp_path / "pt.png", transparency=2)
    img = load_image(path)
    assert [px(img, (x, 0)) for x in range(3)] == [(12, 34, 56), (200, 100, 50), WHITE]


def test_palette_alpha_mode_in_memory() -> None:
    img = Image.new("PA", (2, 1))
    img.putpalette([*RED, 0, 0, 0])
    img.putpixel((0, 0), (0, 255))
    img.putpixel((1, 0), (0, 0))
    assert [px(to_rgb(img), (x, 0)) for x in range(2)] == [RED, WHITE]


def test_premultiplied_la_in_memory() -> None:
    img = Image.new("La", (1, 1), (0, 0))  # Pillow cannot convert La to RGBA directly
    assert px(to_rgb(img)) == WHITE


def test_rgba_png_transparent_pixels_become_white(tmp_path: Path) -> None:
    src = Image.new("RGBA", (3, 1))
    src.putdata([(255, 0, 0, 0), (255, 0, 0, 255), (255, 0, 0, 128)])
    img = load_image(save(src, tmp_path / "rgba.png"))
    assert px(img, (0, 0)) == WHITE
    assert px(img, (1, 0)) == RED
    r, g, b = px(img, (2, 0))
    assert r == 255 and abs(g - 127) <= 1 and abs(b - 127) <= 1


def test_colour_key_transparency_png(tmp_path: Path) -> None:
    src = Image.new("RGB", (2, 1), (10, 20, 30))
    src.putpixel((1, 0), RED)
    img = load_image(save(src, tmp_path / "key.png", transparency=(10, 20, 30)))
    assert [px(img, (x, 0)) for x in range(2)] == [WHITE, RED]


def test_animated_gif_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (8, 6), c) for c in (RED, (0, 255, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert frame_count(path) == 3
    img = load_image(path)
    assert img.size == (8, 6) and px(img) == RED


def test_animated_webp_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (8, 6), c) for c in ((0, 255, 0), RED)]
    path = tmp_path / "anim.webp"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, lossless=True)
    assert frame_count(path) == 2
    img = load_image(path)
    assert img.size == (8, 6) and px(img) == (0, 255, 0)


def test_one_pixel_and_extreme_aspect_ratio(tmp_path: Path) -> None:
    one = load_image(save(Image.new("RGB", (1, 1), (1, 2, 3)), tmp_path / "one.png"))
    assert one.size == (1, 1) and px(one) == (1, 2, 3)
    thin_src = noise(500, 3)
    thin = load_image(save(thin_src, tmp_path / "thin.png"))
    assert thin.size == (3, 500)
    assert np.array_equal(np.asarray(thin), np.asarray(thin_src))


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_exif_orientation_6_rotates_clockwise(tmp_path: Path, suffix: str) -> None:
    src = Image.new("RGB", (40, 20), (0, 0, 0))
    src.paste(RED, (0, 0, 6, 6))  # mark the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    img = load_image(save(src, tmp_path / f"o{suffix}", exif=exif, quality=95))
    assert img.size == (20, 40)
    # Stored top-left ends up top-right once displayed upright.
    assert px(img, (18, 1))[0] > 200 and px(img, (1, 1))[0] < 50 and px(img, (18, 38))[0] < 50


# --------------------------------------------------------------------------------------------
# Bad files
# --------------------------------------------------------------------------------------------


def _truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


@pytest.mark.parametrize(
    ("name", "make", "reason"),
    [
        ("cut.jpg", lambda p: _truncate(save(noise(64, 64), p, quality=90)), "truncated"),
        ("cut.png", lambda p: _truncate(save(noise(64, 64), p)), "truncated"),
        ("header.png", lambda p: _truncate(save(noise(64, 64), p), keep=0.003), "PNG header"),
        ("empty.jpg", lambda p: touch(p, b""), "empty file"),
        ("text.jpg", lambda p: touch(p, b"hello, I am not a JPEG\n"), "not an image"),
        ("folder.png", lambda p: p.mkdir(), "directory"),
        ("missing.png", lambda p: None, "not found"),
    ],
)
def test_bad_files_raise_image_load_error_naming_the_path(
    tmp_path: Path, name: str, make: Callable[[Path], object], reason: str
) -> None:
    path = tmp_path / name
    make(path)
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    err = info.value
    assert str(path) in str(err)
    assert reason in err.reason
    assert err.path == path
    assert isinstance(err, AbsclipError)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_is_rejected_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    with pytest.raises(ImageLoadError, match="not a regular file"):
        load_image(fifo)


def test_truncated_images_are_not_decoded_silently() -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_image_load_error_pickles() -> None:
    err = pickle.loads(pickle.dumps(ImageLoadError("/x/y.jpg", "empty file")))
    assert err.path == Path("/x/y.jpg") and err.reason == "empty file"
    assert "/x/y.jpg" in str(err)


# --------------------------------------------------------------------------------------------
# Huge images
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_large_image_is_downscaled_under_bound_keeping_aspect(tmp_path: Path, suffix: str) -> None:
    src = Image.new("RGB", (400, 200), (0, 200, 0))
    src.paste(RED, (0, 0, 200, 200))  # left half red, right half green
    img = load_image(save(src, tmp_path / f"big{suffix}", quality=95), max_pixels=10_000)
    w, h = img.size
    assert w * h <= 10_000
    assert w * h >= 9_000  # not shrunk further than needed
    assert abs(w / h - 2.0) < 0.05
    assert px(img, (w // 4, h // 2))[0] > 200 and px(img, (3 * w // 4, h // 2))[1] > 150


def test_extreme_aspect_downscale_stays_under_bound(tmp_path: Path) -> None:
    img = load_image(save(noise(500, 3), tmp_path / "thin.png"), max_pixels=100)
    assert img.size[0] * img.size[1] <= 100 and img.size[1] > img.size[0]


def test_decompression_bomb_limit_handled_locally(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Pretend the images are bombs by lowering Pillow's limit for this test only.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5_000)
    jpeg = save(Image.new("RGB", (200, 200), RED), tmp_path / "bomb.jpg", quality=95)
    png = save(Image.new("RGB", (200, 200), RED), tmp_path / "bomb.png")
    with pytest.raises(Image.DecompressionBombError):
        Image.open(jpeg)
    # JPEG: decoded at reduced DCT scale instead of failing.
    img = load_image(jpeg, max_pixels=10_000)
    assert img.size == (100, 100) and px(img)[0] > 240
    # PNG would need full-size memory: reported, not raised as Pillow's error.
    with pytest.raises(ImageLoadError, match="too large"):
        load_image(png, max_pixels=10_000)
    assert Image.MAX_IMAGE_PIXELS == 5_000  # the global limit is left alone


def test_load_does_not_touch_global_pillow_limits(tmp_path: Path) -> None:
    before = Image.MAX_IMAGE_PIXELS
    load_image(save(noise(50, 80), tmp_path / "n.jpg"), max_pixels=1_000)
    assert before == Image.MAX_IMAGE_PIXELS
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_max_pixels_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        load_image(save(noise(2, 2), tmp_path / "n.png"), max_pixels=0)


# --------------------------------------------------------------------------------------------
# Tensors and iteration
# --------------------------------------------------------------------------------------------


def test_image_to_tensor_layout_and_values() -> None:
    src = noise(5, 7)
    t = image_to_tensor(src)
    assert t.dtype == torch.uint8 and tuple(t.shape) == (3, 5, 7) and t.is_contiguous()
    assert torch.equal(t, torch.from_numpy(np.asarray(src).copy()).permute(2, 0, 1))
    assert tuple(image_to_tensor(Image.new("RGB", (1, 1), (9, 8, 7))).flatten().tolist()) == (9, 8, 7)


def test_image_to_tensor_rejects_non_rgb() -> None:
    with pytest.raises(ValueError, match="RGB"):
        image_to_tensor(Image.new("L", (2, 2)))


def test_iter_loaded_continues_after_bad_file(tmp_path: Path) -> None:
    good1 = save(Image.new("RGB", (4, 4), RED), tmp_path / "1.png")
    bad = touch(tmp_path / "2.jpg", b"garbage")
    good2 = save(Image.new("RGB", (6, 2), RED), tmp_path / "3.png")
    results = list(iter_loaded([good1, bad, good2]))
    assert [r[0] for r in results] == [good1, bad, good2]
    assert results[0][1] is not None and results[0][1].size == (4, 4) and results[0][2] is None
    assert results[1][1] is None and isinstance(results[1][2], ImageLoadError) and results[1][2].path == bad
    assert results[2][1] is not None and results[2][1].size == (6, 2) and results[2][2] is None


def test_iter_loaded_strict_raises_at_first_error(tmp_path: Path) -> None:
    good = save(Image.new("RGB", (4, 4), RED), tmp_path / "1.png")
    bad = touch(tmp_path / "2.jpg", b"")
    seen: list[Path] = []
    with pytest.raises(ImageLoadError, match="empty file"):
        for path, _img, _err in iter_loaded([good, bad, good], strict=True):
            seen.append(path)
    assert seen == [good]

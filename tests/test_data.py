"""Dataset adapters on tiny generated replicas of each real on-disk layout (no real data, no /work/shared)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from absclip.data import LabelledImages, create_dataset, dataset_info, dataset_resources, list_datasets
from absclip.errors import InputFileError, UnsupportedError
from absclip.text.classes import ClassList


@pytest.fixture(scope="session")
def jpeg() -> bytes:
    """One real 4x4 JPEG; written to every image path (the adapters never decode, but keep it real)."""
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 30, 30)).save(buffer, format="JPEG")
    return buffer.getvalue()


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)
    return path


def make_data_dir(root: Path, files: dict[str, object]) -> Path:
    """A stand-in for ``--data-dir``: relative path -> JSON content."""
    for rel, content in files.items():
        write(root / rel, json.dumps(content))
    return root


def wnid(index: int) -> str:
    # Sorted fake wnids follow ImageNet index order, like the real ones.
    return f"n{index:08d}"


def make_class_tree(directory: Path, folders: list[str], jpeg: bytes, per_class: int = 1) -> None:
    for folder in folders:
        for k in range(per_class):
            write(directory / folder / f"img_{k}.JPEG", jpeg)


IMAGENET_NAMES = [f"in{i}" for i in range(1000)]


def test_all_datasets_registered() -> None:
    assert set(list_datasets()) >= {
        "folder",
        "imagenet",
        "imagenet-v2",
        "imagenet-sketch",
        "imagenet-r",
        "imagenet-a",
        "cub",
        "oxford-pet",
        "dtd",
        "food101",
        "places365",
    }
    assert dataset_info("imagenet").num_classes == 1000


# --- folder -------------------------------------------------------------------------------------


def test_folder_names_labels_and_filtering(tmp_path: Path, jpeg: bytes) -> None:
    make_class_tree(tmp_path, ["golden_retriever", "cat"], jpeg, per_class=2)
    write(tmp_path / "cat" / "notes.txt", "not an image")
    write(tmp_path / "cat" / ".hidden.jpg", jpeg)
    write(tmp_path / "cat" / "nested" / "deep.png", jpeg)
    ds = create_dataset("folder", tmp_path)
    assert isinstance(ds, LabelledImages)
    assert ds.classes.names == ("cat", "golden retriever")
    assert len(ds) == 5
    path, label = ds[0]
    assert isinstance(path, Path) and label == 0
    assert sorted(ds.targets) == [0, 0, 0, 1, 1]
    assert all(p.parent.name == "golden_retriever" for p, lbl in ds.samples if lbl == 1)
    assert ds.imagenet_indices is None

    override = create_dataset("folder", tmp_path, class_names=ClassList(("a cat", "a dog")))
    assert override.classes.names == ("a cat", "a dog")
    with pytest.raises(InputFileError, match="has 3 class names but the dataset has 2"):
        create_dataset("folder", tmp_path, class_names=ClassList(("a", "b", "c")))


def test_folder_errors(tmp_path: Path, jpeg: bytes) -> None:
    with pytest.raises(
        InputFileError, match=r"folder: dataset root .*missing does not exist.*expected ROOT/"
    ):
        create_dataset("folder", tmp_path / "missing")
    write(tmp_path / "loose.jpg", jpeg)
    with pytest.raises(InputFileError, match="no class folders in"):
        create_dataset("folder", tmp_path)
    make_class_tree(tmp_path, ["a"], jpeg)
    (tmp_path / "b").mkdir()
    with pytest.raises(InputFileError, match=r"1 of 2 class folders .* hold no images \(b\).*half-extracted"):
        create_dataset("folder", tmp_path)


def symlink_or_skip(link: Path, target: Path) -> None:
    try:
        link.symlink_to(target, target_is_directory=True)
    except (OSError, NotImplementedError) as exc:  # e.g. Windows without symlink rights
        pytest.skip(f"symlinks unavailable: {exc}")


def test_folder_symlink_cycle_lists_each_image_once(tmp_path: Path, jpeg: bytes) -> None:
    root = tmp_path / "ds"
    make_class_tree(root, ["cat", "dog"], jpeg, per_class=2)
    write(root / "cat" / "sub" / "deep.jpg", jpeg)
    symlink_or_skip(root / "cat" / "loop", root / "cat")  # class dir -> itself: a cycle
    symlink_or_skip(root / "cat" / "sub" / "back", root / "cat" / "sub")
    ds = create_dataset("folder", root)
    cats = sorted(p.relative_to(root).as_posix() for p, label in ds.samples if label == 0)
    assert cats == ["cat/img_0.JPEG", "cat/img_1.JPEG", "cat/sub/deep.jpg"]
    assert ds.targets.count(1) == 2


def test_folder_follows_symlinked_class_dirs_and_keeps_imagefolder_suffixes(tmp_path: Path, jpeg: bytes) -> None:
    make_class_tree(tmp_path / "elsewhere", ["birds"], jpeg, per_class=2)
    root = tmp_path / "ds"
    make_class_tree(root, ["cat"], jpeg)
    write(root / "cat" / "anim.gif", jpeg)  # Pillow reads GIF, but ImageFolder (and so the dataset) skips it
    symlink_or_skip(root / "bird", tmp_path / "elsewhere" / "birds")
    ds = create_dataset("folder", root)
    assert ds.classes.names == ("bird", "cat")
    assert [(p.relative_to(root).as_posix(), label) for p, label in ds.samples] == [
        ("bird/img_0.JPEG", 0),
        ("bird/img_1.JPEG", 0),
        ("cat/img_0.JPEG", 1),
    ]


def test_unknown_dataset(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedError, match="unknown dataset 'nope'; known: cub"):
        create_dataset("nope", tmp_path)


# --- ImageNet family ----------------------------------------------------------------------------


@pytest.fixture
def imagenet_data_dir(tmp_path: Path) -> Path:
    return make_data_dir(
        tmp_path / "shared",
        {
            "classnames/imagenet.json": IMAGENET_NAMES,
            "classnames/imagenet_r_indices.json": list(range(0, 1000, 5)),
            "classnames/imagenet_a_indices.json": list(range(3, 1000, 5)),
        },
    )


def test_imagenet_val_layout_and_names(tmp_path: Path, jpeg: bytes, imagenet_data_dir: Path) -> None:
    root = tmp_path / "ilsvrc"
    make_class_tree(root / "val", [wnid(i) for i in range(1000)], jpeg)
    write(root / "val" / wnid(7) / "second.JPEG", jpeg)
    (root / "train").mkdir()  # a sibling split must not confuse the search
    ds = create_dataset("imagenet", root, data_dir=imagenet_data_dir)
    assert len(ds) == 1001 and len(ds.classes) == 1000
    assert ds.classes[7] == "in7"
    assert all(p.parent.name == wnid(label) for p, label in ds.samples)
    # ROOT may also be the val directory itself.
    assert len(create_dataset("imagenet", root / "val", data_dir=imagenet_data_dir)) == 1001
    # The train split has the same layout; it must never be scored by mistake.
    make_class_tree(root / "train", [wnid(i) for i in range(1000)], jpeg)
    with pytest.raises(InputFileError, match="is the training split"):
        create_dataset("imagenet", root / "train", data_dir=imagenet_data_dir)

    with pytest.raises(
        InputFileError, match=r"--data-dir DIR holding classnames/imagenet.json, or --classes"
    ):
        create_dataset("imagenet", root)


def test_imagenet_wrong_count_and_stray_folders(tmp_path: Path, jpeg: bytes) -> None:
    make_class_tree(tmp_path / "val", [wnid(i) for i in range(999)], jpeg)
    with pytest.raises(InputFileError, match=r"found 999 wnid class folders in .*val but expected 1000"):
        create_dataset("imagenet", tmp_path)
    (tmp_path / "val" / "extras").mkdir()
    with pytest.raises(InputFileError, match="not WordNet ids: extras"):
        create_dataset("imagenet", tmp_path)


def test_imagenet_missing_explains_layout(tmp_path: Path) -> None:
    (tmp_path / "val").mkdir()
    with pytest.raises(InputFileError) as info:
        create_dataset("imagenet", tmp_path)
    message = str(info.value)
    assert message.startswith("imagenet: no WordNet-id class folders (n01440764, ...) in")
    assert str(tmp_path / "val") in message and "ROOT/val/<wnid>/<image>" in message


def test_imagenet_sketch(tmp_path: Path, jpeg: bytes, imagenet_data_dir: Path) -> None:
    make_class_tree(tmp_path / "sketch", [wnid(i) for i in range(1000)], jpeg)
    ds = create_dataset("imagenet-sketch", tmp_path, data_dir=imagenet_data_dir)
    assert len(ds) == 1000 and ds.samples[999][1] == 999


def test_imagenet_v2_sorts_numerically(tmp_path: Path, jpeg: bytes, imagenet_data_dir: Path) -> None:
    base = tmp_path / "imagenetv2-matched-frequency-format-val"
    make_class_tree(base, [str(i) for i in range(1000)], jpeg)
    ds = create_dataset("imagenet-v2", tmp_path, data_dir=imagenet_data_dir)
    labels = [label for _, label in ds.samples]
    assert labels == list(range(1000))  # lexicographic order would give 0, 1, 10, 100, ...
    assert all(int(p.parent.name) == label for p, label in ds.samples)
    assert ds.classes[10] == "in10"
    assert len(create_dataset("imagenet-v2", base, data_dir=imagenet_data_dir)) == 1000

    (base / "7").rename(base / "1000")
    with pytest.raises(InputFileError, match=r"skip \[7\]"):
        create_dataset("imagenet-v2", tmp_path, data_dir=imagenet_data_dir)


@pytest.mark.parametrize("name", ["imagenet-r", "imagenet-a"])
def test_imagenet_subsets(tmp_path: Path, jpeg: bytes, imagenet_data_dir: Path, name: str) -> None:
    indices = list(range(0, 1000, 5)) if name == "imagenet-r" else list(range(3, 1000, 5))
    root = tmp_path / "data"
    make_class_tree(root / name, [wnid(i) for i in indices], jpeg, per_class=2)
    write(root / name / "README.txt", "top-level files are ignored")
    ds = create_dataset(name, root, data_dir=imagenet_data_dir)
    assert len(ds.classes) == 200 and len(ds) == 400
    assert ds.imagenet_indices == indices
    assert ds.classes.names == tuple(IMAGENET_NAMES[i] for i in indices)
    assert all(p.parent.name == wnid(indices[label]) for p, label in ds.samples)

    # 200 names given directly: no data dir needed, but then the 1k indices are unknown.
    own = ClassList(tuple(f"c{i}" for i in range(200)))
    plain = create_dataset(name, root / name, class_names=own)
    assert plain.classes == own and plain.imagenet_indices is None
    # A full 1000-name list is narrowed with the indices file.
    full = ClassList(tuple(f"openai{i}" for i in range(1000)))
    narrowed = create_dataset(name, root, class_names=full, data_dir=imagenet_data_dir)
    assert narrowed.classes[1] == f"openai{indices[1]}"
    with pytest.raises(InputFileError, match="lists all 1000 ImageNet classes"):
        create_dataset(name, root, class_names=full)


def test_imagenet_subset_errors(tmp_path: Path, jpeg: bytes, imagenet_data_dir: Path) -> None:
    root = tmp_path / "data"
    make_class_tree(root / "imagenet-r", [wnid(i) for i in range(0, 995, 5)], jpeg)
    with pytest.raises(InputFileError, match=r"imagenet-r: found 199 wnid class folders .* expected 200"):
        create_dataset("imagenet-r", root, data_dir=imagenet_data_dir)
    make_class_tree(root / "imagenet-r", [wnid(995)], jpeg)
    write(imagenet_data_dir / "classnames/imagenet_r_indices.json", json.dumps(list(range(200))[::-1]))
    with pytest.raises(InputFileError, match="strictly increasing"):
        create_dataset("imagenet-r", root, data_dir=imagenet_data_dir)
    (imagenet_data_dir / "classnames/imagenet_r_indices.json").unlink()
    with pytest.raises(InputFileError, match=r"indices file not found: expected .*imagenet_r_indices.json"):
        create_dataset("imagenet-r", root, data_dir=imagenet_data_dir)
    empty = tmp_path / "empty"
    (empty / "imagenet-a").mkdir(parents=True)
    with pytest.raises(
        InputFileError, match=r"imagenet-a: no WordNet-id class folders .* in .*imagenet-a or"
    ):
        create_dataset("imagenet-a", empty)


# --- CUB ----------------------------------------------------------------------------------------


def make_cub(root: Path, jpeg: bytes, classes: int = 200) -> Path:
    base = root / "CUB_200_2011"
    images, labels, split, class_lines = [], [], [], []
    image_id = 0
    for c in range(1, classes + 1):
        folder = f"{c:03d}.Bird_{c}"
        class_lines.append(f"{c} {folder}")
        for is_train in (1, 0):
            image_id += 1
            rel = f"{folder}/Bird_{c}_{image_id}.jpg"
            write(base / "images" / rel, jpeg)
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {c}")
            split.append(f"{image_id} {is_train}")
    for name, lines in [
        ("images.txt", images),
        ("image_class_labels.txt", labels),
        ("train_test_split.txt", split),
        ("classes.txt", class_lines),
    ]:
        write(base / name, "\n".join(lines) + "\n")
    return base


def test_cub_test_split(tmp_path: Path, jpeg: bytes) -> None:
    base = make_cub(tmp_path, jpeg)
    data_dir = make_data_dir(tmp_path / "shared", {"classnames/cub.json": [f"Bird {i}" for i in range(200)]})
    ds = create_dataset("cub", tmp_path, data_dir=data_dir)
    assert len(ds) == 200  # only is_training_image == 0
    assert all(int(p.stem.rsplit("_", 1)[1]) % 2 == 0 for p, _ in ds.samples)  # test ids are the even ones
    assert ds.samples[0][1] == 0 and ds.samples[-1][1] == 199  # 1-based files -> 0-based labels
    assert all(p.parent.name.startswith(f"{label + 1:03d}.") for p, label in ds.samples)
    assert ds.classes[0] == "Bird 0"
    assert len(create_dataset("cub", base, data_dir=data_dir)) == 200

    with pytest.raises(InputFileError, match=r"classnames/cub.json, or --classes FILE with 200 names"):
        create_dataset("cub", tmp_path)


def test_cub_half_extracted_and_missing(tmp_path: Path, jpeg: bytes) -> None:
    base = make_cub(tmp_path, jpeg, classes=200)
    names = ClassList(tuple(f"b{i}" for i in range(200)))
    (base / "images" / "200.Bird_200" / "Bird_200_400.jpg").unlink()
    with pytest.raises(
        InputFileError, match=r"cub: 1 of 200 images listed in .*images.txt .* half-extracted"
    ):
        create_dataset("cub", tmp_path, class_names=names)
    (base / "train_test_split.txt").unlink()
    with pytest.raises(InputFileError, match=r"lacks train_test_split.txt; expected ROOT/CUB_200_2011/"):
        create_dataset("cub", tmp_path, class_names=names)
    with pytest.raises(InputFileError, match=r"cub: no images.txt in .*CUB_200_2011 or"):
        create_dataset("cub", tmp_path / "CUB_200_2011" / "images", class_names=names)


# --- torchvision-backed -------------------------------------------------------------------------


def make_pets(root: Path, jpeg: bytes) -> Path:
    base = root / "oxford-iiit-pet"
    breeds = ["Abyssinian"] + [f"breed_{i:02d}" for i in range(1, 37)]
    lines = []
    for label, breed in enumerate(breeds, 1):
        for k in (1, 2):
            write(base / "images" / f"{breed}_{k}.jpg", jpeg)
            lines.append(f"{breed}_{k} {label} 1 1")
    write(base / "annotations" / "test.txt", "\n".join(lines) + "\n")
    write(base / "annotations" / "trainval.txt", "")
    return base


def test_oxford_pet(tmp_path: Path, jpeg: bytes) -> None:
    base = make_pets(tmp_path, jpeg)
    ds = create_dataset("oxford-pet", tmp_path)
    assert len(ds) == 74 and len(ds.classes) == 37
    assert ds.classes[0] == "Abyssinian" and ds.classes[1] == "Breed 01"  # torchvision's title-cased names
    assert ds.samples[2] == (base / "images" / "breed_01_1.jpg", 1)
    data_dir = make_data_dir(
        tmp_path / "shared", {"classnames/oxford_pet.json": [f"pet {i}" for i in range(37)]}
    )
    assert create_dataset("oxford-pet", base / "images", data_dir=data_dir).classes[1] == "pet 1"

    with pytest.raises(InputFileError, match="has 2 class names but the dataset has 37"):
        create_dataset("oxford-pet", tmp_path, class_names=ClassList(("cat", "dog")))

    lines = (base / "annotations" / "test.txt").read_text().splitlines()
    write(base / "annotations" / "test.txt", "\n".join(lines[:72]) + "\n")  # last breed cut off
    with pytest.raises(
        InputFileError, match=r"oxford-pet: found 36 breeds in annotations/test.txt .* expected 37"
    ):
        create_dataset("oxford-pet", tmp_path, data_dir=data_dir)


def test_oxford_pet_not_found(tmp_path: Path, jpeg: bytes) -> None:
    base = make_pets(tmp_path, jpeg)
    for path in (base / "annotations").iterdir():
        path.unlink()
    (base / "annotations").rmdir()
    with pytest.raises(InputFileError) as info:
        create_dataset("oxford-pet", tmp_path)
    message = str(info.value)
    assert "Dataset not found" in message and "ROOT/oxford-iiit-pet/annotations/test.txt" in message
    assert str(tmp_path) in message
    with pytest.raises(InputFileError, match=r"oxford-pet: dataset root .*nowhere does not exist"):
        create_dataset("oxford-pet", tmp_path / "nowhere")
    elsewhere = tmp_path / "a" / "b" / "c"
    elsewhere.mkdir(parents=True)
    with pytest.raises(
        InputFileError, match=r"oxford-iiit-pet not found in .* or its two parent directories"
    ):
        create_dataset("oxford-pet", elsewhere)


def make_dtd(root: Path, jpeg: bytes) -> Path:
    data = root / "dtd" / "dtd"
    lines = []
    for c in range(47):
        for k in (1, 2):
            write(data / "images" / f"tex_{c:02d}" / f"tex_{c:02d}_{k}.jpg", jpeg)
            lines.append(f"tex_{c:02d}/tex_{c:02d}_{k}.jpg")
    write(data / "labels" / "test1.txt", "\n".join(lines) + "\n")
    return data


def test_dtd(tmp_path: Path, jpeg: bytes) -> None:
    data = make_dtd(tmp_path, jpeg)
    ds = create_dataset("dtd", tmp_path)
    assert len(ds) == 94 and ds.classes[3] == "tex 03"
    assert ds.samples[-1] == (data / "images" / "tex_46" / "tex_46_2.jpg", 46)
    assert len(create_dataset("dtd", data)) == 94  # ROOT may point inside the layout

    (data / "images" / "tex_46" / "tex_46_2.jpg").unlink()
    with pytest.raises(InputFileError, match=r"dtd: 1 of 94 images listed in .*test1.txt are missing"):
        create_dataset("dtd", tmp_path)
    (data / "labels" / "test1.txt").unlink()
    with pytest.raises(
        InputFileError, match=r"torchvision could not read .*test1.txt.*expected ROOT/dtd/dtd"
    ):
        create_dataset("dtd", tmp_path)


def test_food101(tmp_path: Path, jpeg: bytes) -> None:
    base = tmp_path / "food-101"
    meta = {}
    for c in range(101):
        meta[f"dish_{c:03d}"] = [f"dish_{c:03d}/{c * 10 + k}" for k in (1, 2)]
        for rel in meta[f"dish_{c:03d}"]:
            write(base / "images" / f"{rel}.jpg", jpeg)
    write(base / "meta" / "test.json", json.dumps(meta))
    ds = create_dataset("food101", tmp_path)
    assert len(ds) == 202 and ds.classes[5] == "dish 005"
    assert all(p.parent.name == f"dish_{label:03d}" for p, label in ds.samples)
    data_dir = make_data_dir(tmp_path / "shared", {"classnames/food101.json": [f"f{i}" for i in range(101)]})
    assert create_dataset("food101", tmp_path, data_dir=data_dir).classes[5] == "f5"
    with pytest.raises(InputFileError, match=r"food101: classnames file not found: expected .*food101.json"):
        create_dataset("food101", tmp_path, data_dir=tmp_path / "shared" / "classnames")

    del meta["dish_100"]
    write(base / "meta" / "test.json", json.dumps(meta))
    with pytest.raises(InputFileError, match=r"found 100 classes in meta/test.json .* but expected 101"):
        create_dataset("food101", tmp_path)


def make_places(root: Path, jpeg: bytes) -> Path:
    categories = [f"/{chr(97 + c % 26)}/scene_{c:03d} {c}" for c in range(365)]
    write(root / "categories_places365.txt", "\n".join(categories) + "\n")
    lines = []
    for c in range(365):
        name = f"Places365_val_{c:08d}.jpg"
        write(root / "val_256" / name, jpeg)
        lines.append(f"{name} {364 - c}")
    write(root / "places365_val.txt", "\n".join(lines) + "\n")
    return root


def test_places365(tmp_path: Path, jpeg: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets.places365 as tv_places

    root = make_places(tmp_path / "places", jpeg)
    names = ClassList(tuple(f"scene {i}" for i in range(365)))
    # Our replica's devkit files cannot match torchvision's MD5 sums: unpatched, that is reported.
    with pytest.raises(InputFileError, match=r"places365: torchvision could not read .*corrupted.*val_256"):
        create_dataset("places365", root, class_names=names)

    monkeypatch.setattr(tv_places, "check_integrity", lambda *args, **kwargs: True)
    with pytest.raises(InputFileError, match=r"classnames/place365.json, or --classes FILE with 365 names"):
        create_dataset("places365", root)
    data_dir = make_data_dir(tmp_path / "shared", {"classnames/place365.json": list(names.names)})
    ds = create_dataset("places365", root, data_dir=data_dir)
    assert len(ds) == 365 and ds.classes[4] == "scene 4"
    assert ds.samples[0] == (root / "val_256" / "Places365_val_00000000.jpg", 364)

    (root / "val_256").rename(root / "val_large")
    assert len(create_dataset("places365", root, class_names=names)) == 365
    (root / "val_large").rename(root / "elsewhere")
    with pytest.raises(InputFileError, match="neither val_256/ nor val_large/"):
        create_dataset("places365", root, class_names=names)


# --- shared-data resources and the LabelledImages type -------------------------------------------


def test_dataset_resources(tmp_path: Path) -> None:
    data_dir = make_data_dir(
        tmp_path,
        {"classnames/dtd.json": ["a"], "descriptions/dtd/cupl.json": {}, "descriptions/dtd/clip-d.json": {}},
    )
    found = dataset_resources("dtd", data_dir, ["classnames", "cupl"])
    assert found == {
        "classnames": data_dir / "classnames/dtd.json",
        "cupl": data_dir / "descriptions/dtd/cupl.json",
    }
    with pytest.raises(InputFileError) as info:
        dataset_resources("dtd", data_dir)
    message = str(info.value)
    assert "clip-e file not found" in message and str(data_dir / "descriptions/dtd/clip-e.json") in message
    assert "present for dtd: classnames, cupl, clip-d" in message
    with pytest.raises(UnsupportedError, match="no shared-data file of kind 'indices'"):
        dataset_resources("dtd", data_dir, ["indices"])
    r = dataset_info("imagenet-r").resources()
    assert (
        r["indices"] == "classnames/imagenet_r_indices.json"
        and r["clip-d"] == "descriptions/imagenet/clip-d.json"
    )
    assert dataset_info("folder").resources() == {}


def test_labelled_images_checks_labels() -> None:
    with pytest.raises(InputFileError, match=r"labels outside 0..1"):
        LabelledImages("x", [(Path("a.jpg"), 2)], ClassList(("a", "b")))

"""Text side (DESIGN.md §1): class lists, description files, prompt builders, cached embeddings and the
text-side methods on a tiny random CLIP, each checked against an independent computation that calls
``backbone.encode_text`` directly."""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest
import torch

from absclip.backbones import Backbone, create_backbone
from absclip.errors import InputFileError
from absclip.methods import MethodOptions, TextInputs, create_method
from absclip.text import ClassList, TextEmbedder, load_classes, load_descriptions, resolve_descriptions
from absclip.text.descriptions import read_description_file
from absclip.text.prompts import (
    clip_d_sentence,
    clip_d_texts,
    format_template,
    load_templates,
    waffle_descriptors,
)
from absclip.views import ViewSet


def write(path: Path, content: str | object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return path


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)


# ==== class lists ============================================================================================
def test_load_classes_comma_list_and_list() -> None:
    assert load_classes("cat, dog ,  bird,").names == ("cat", "dog", "bird")
    assert load_classes(["cat ", " dog"]).names == ("cat", "dog")
    assert load_classes(("a b", "c")).names == ("a b", "c")
    # one class cannot be classified among; `absclip describe` asks for one explicitly
    for one in ("cat", ["cat"], ("a b",)):
        with pytest.raises(InputFileError, match=r"at least two|one name is not a class list"):
            load_classes(one)
    assert load_classes("cat", min_classes=1).names == ("cat",)
    assert load_classes(["cat"], min_classes=1).names == ("cat",)


def test_load_classes_text_file_skips_comments_and_blanks(tmp_path: Path) -> None:
    path = write(tmp_path / "classes.txt", "# header\ncat\n\n  dog  \n# note\nsea lion\n")
    classes = load_classes(path)
    assert classes.names == ("cat", "dog", "sea lion")
    assert classes.source == str(path)
    assert load_classes(str(path)).names == classes.names


def test_load_classes_json_forms(tmp_path: Path) -> None:
    assert load_classes(write(tmp_path / "a.json", ["cat", " dog "])).names == ("cat", "dog")
    synonyms = [["tench", "Tinca tinca"], ["goldfish", "Carassius auratus"], "shark"]
    assert load_classes(write(tmp_path / "b.json", synonyms)).names == ("tench", "goldfish", "shark")
    # index dict: must be ordered numerically (a string sort would put "10" right after "1")
    names = [f"class{i}" for i in range(12)]
    mapping = {str(i): n for i, n in reversed(list(enumerate(names)))}
    assert load_classes(write(tmp_path / "c.json", mapping)).names == tuple(names)


@pytest.mark.parametrize(
    ("filename", "content", "needle"),
    [
        ("empty.json", [], "empty"),
        ("comments.txt", "# only a comment\n\n", "empty"),
        ("bad.json", "[\"cat\", ", "not valid JSON"),
        ("numbers.json", [1, 2], "string"),
        ("gap.json", {"0": "cat", "2": "dog"}, "without gaps"),
        ("keys.json", {"cat": "x"}, "integer keys"),
        ("object.json", "\"cat\"", "JSON list"),
        ("blank.json", ["cat", "  "], "[1]"),
    ],
)
def test_load_classes_bad_files_name_the_path(tmp_path: Path, filename: str, content: object, needle: str) -> None:
    path = write(tmp_path / filename, content)
    with pytest.raises(InputFileError) as info:
        load_classes(path)
    assert str(path) in str(info.value)
    assert needle in str(info.value)


@pytest.mark.parametrize("name", ["missing.json", "missing.txt", "sub/dir/classes"])
def test_load_classes_missing_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    with pytest.raises(InputFileError, match="not found") as info:
        load_classes(str(path))
    assert str(path) in str(info.value)


def test_load_classes_empty_comma_list() -> None:
    with pytest.raises(InputFileError, match="empty"):
        load_classes(" , ,")


def test_class_list_duplicates_and_subset() -> None:
    classes = ClassList(("crane", "cat", "crane", "dog", "cat"))
    assert classes.duplicates() == {"crane": [0, 2], "cat": [1, 4]}
    assert classes.subset([3, 0]).names == ("dog", "crane")
    assert len(classes) == 5 and classes[3] == "dog"


# ==== descriptions ===========================================================================================
CLASSES = ClassList(("crane", "Black_footed Albatross", "crane", "cat", "dog", "owl"))
DATA = {
    "crane": ["a long neck", "grey feathers"],
    "black footed albatross": ["  long wings ", "", "dark feet"],
    "cat": [],
    "owl": ["   "],
    "zebra": ["stripes"],
    "Sea_Lion": ["flippers"],
}


def test_resolve_descriptions_dict_form() -> None:
    desc = resolve_descriptions(CLASSES, DATA, source="d.json")
    assert desc.source == "d.json"
    assert desc.texts[0] == ["a long neck", "grey feathers"]
    assert desc.texts[2] == desc.texts[0]  # duplicate names share one entry
    assert desc.texts[1] == ["long wings", "dark feet"]  # name normalisation; stripped; blanks dropped
    assert desc.texts[3] == ["a photo of a cat."]  # empty list -> fallback
    assert desc.texts[4] == ["a photo of a dog."]  # no key -> fallback
    assert desc.texts[5] == ["a photo of a owl."]  # only blank texts -> fallback
    res = desc.resolution
    assert res.shared == {"crane": [0, 2]}
    assert res.missing == [4]
    assert res.empty == [3, 5]
    assert sorted(res.unused_keys) == ["Sea_Lion", "zebra"]


def test_resolve_descriptions_name_normalisation_both_ways() -> None:
    classes = ClassList(("black footed albatross", "Sea_Lion", "Great   Grey owl"))
    data = {"Black_footed Albatross": ["x"], "sea lion": ["y"], "great_grey_OWL": ["z"]}
    desc = resolve_descriptions(classes, data)
    assert desc.texts == [["x"], ["y"], ["z"]]
    assert desc.resolution.missing == [] and desc.resolution.unused_keys == []


def test_resolve_descriptions_shared_after_name_normalisation() -> None:
    """Names that differ only in case/underscores resolve to one entry: that sharing is reported too."""
    classes = ClassList(("Crane", "cat", "crane", "sea_lion", "Sea Lion"))
    desc = resolve_descriptions(classes, {"crane": ["x"], "sea lion": []})
    assert desc.texts[0] == desc.texts[2] == ["x"]
    assert desc.resolution.shared == {"Crane": [0, 2]}
    assert desc.resolution.empty == [3, 4] and desc.resolution.missing == [1]


def test_resolve_descriptions_custom_fallback() -> None:
    desc = resolve_descriptions(ClassList(("cat",)), {}, fallback="art of the {}")
    assert desc.texts == [["art of the cat"]]
    assert desc.resolution.missing == [0]


def test_resolution_messages_mention_indices() -> None:
    desc = resolve_descriptions(CLASSES, DATA)
    text = "\n".join(desc.resolution.messages(CLASSES))
    assert "[0, 2]" in text and "'crane'" in text
    assert "4:'dog'" in text
    assert "3:'cat'" in text and "5:'owl'" in text
    assert "'zebra'" in text and "'Sea_Lion'" in text
    clean = resolve_descriptions(ClassList(("cat",)), {"cat": ["x"]})
    assert clean.resolution.messages(ClassList(("cat",))) == []


def test_resolve_descriptions_list_form_by_index() -> None:
    classes = ClassList(("crane", "cat", "crane"))
    desc = resolve_descriptions(classes, [["first crane"], [], ["second crane", " x "]])
    assert desc.texts == [["first crane"], ["a photo of a cat."], ["second crane", "x"]]
    assert desc.resolution.empty == [1]
    assert desc.resolution.shared == {} and desc.resolution.missing == []
    with pytest.raises(InputFileError, match="one entry per class"):
        resolve_descriptions(classes, [["a"], ["b"]], source="list.json")


def test_descriptions_capped() -> None:
    desc = resolve_descriptions(ClassList(("a", "b")), {"a": ["1", "2", "3"], "b": ["4"]})
    assert desc.capped(2) == [["1", "2"], ["4"]]
    assert desc.capped(None) == [["1", "2", "3"], ["4"]]


def test_load_descriptions_and_file_errors(tmp_path: Path) -> None:
    path = write(tmp_path / "d.json", {"cat": ["whiskers"]})
    desc = load_descriptions(ClassList(("cat", "dog")), path)
    assert desc.texts == [["whiskers"], ["a photo of a dog."]]
    assert desc.source == str(path)
    listed = write(tmp_path / "l.json", [["x"], ["y"]])
    assert read_description_file(listed) == [["x"], ["y"]]
    for name, content in [("bad.json", "{"), ("values.json", {"cat": "whiskers"}), ("scalar.json", 3)]:
        bad = write(tmp_path / name, content)
        with pytest.raises(InputFileError) as info:
            read_description_file(bad)
        assert str(bad) in str(info.value)
    with pytest.raises(InputFileError, match="not found") as info:
        read_description_file(tmp_path / "nope.json")
    assert str(tmp_path / "nope.json") in str(info.value)


# ==== prompt builders ========================================================================================
@pytest.mark.parametrize(
    ("descriptor", "plain", "quirk"),
    [
        ("a long tail", "which is a long tail", "which is a long tail"),
        ("an orange beak", "which is an orange beak", "which is an orange beak"),
        ("antennae", "which has antennae", "which is antennae"),
        ("angular wings", "which has angular wings", "which is angular wings"),
        ("has wings", "which has wings", "which has wings"),
        ("often red", "which often red", "which often red"),
        ("typically found in trees", "which typically found in trees", "which typically found in trees"),
        ("may have spots", "which may have spots", "which may have spots"),
        ("can fly", "which can fly", "which can fly"),
        ("used for riding", "which is used for riding", "which is used for riding"),
        ("four legs", "which has four legs", "which has four legs"),
    ],
)
def test_clip_d_sentence(descriptor: str, plain: str, quirk: str) -> None:
    assert clip_d_sentence(descriptor) == plain
    assert clip_d_sentence(descriptor, reference_a_quirk=True) == quirk


def test_clip_d_texts() -> None:
    assert clip_d_texts("ant", ["antennae", "six legs"]) == ["ant, which has antennae", "ant, which has six legs"]
    assert clip_d_texts("ant", ["antennae"], reference_a_quirk=True) == ["ant, which is antennae"]


def test_waffle_descriptors_seeded_and_shaped() -> None:
    words = ["ox", "cat", "frog", "tiger", "monkey", "giraffe", "elephant"]  # distinct lengths
    a = waffle_descriptors(6, seed=3, words=words)
    assert a == waffle_descriptors(6, seed=3, words=words)
    assert a != waffle_descriptors(6, seed=4, words=words)
    assert len(a) == 12
    word_pairs = [d.split(" ") for d in a[:6]]
    char_pairs = [d.split(" ") for d in a[6:]]
    for pair in word_pairs:
        assert len(pair) == 2 and all(w in words for w in pair)
    for (w1, w2), (c1, c2) in zip(word_pairs, char_pairs, strict=True):
        assert (len(c1), len(c2)) == (len(w1), len(w2))
        assert set(c1 + c2) <= set(string.ascii_lowercase)
    assert len(waffle_descriptors(1, seed=0, words=words)) == 2


def test_waffle_descriptors_default_words_and_errors() -> None:
    a = waffle_descriptors(4, seed=0)
    assert a == waffle_descriptors(4, seed=0) and len(a) == 8
    assert all(w.isalpha() for d in a for w in d.split(" "))
    with pytest.raises(InputFileError):
        waffle_descriptors(3, seed=0, words=["only", "  "])


def test_load_templates(tmp_path: Path) -> None:
    imagenet = load_templates("imagenet")
    assert len(imagenet) == 80
    assert all("{}" in t for t in imagenet)
    assert imagenet[0].format("cat") == "a bad photo of a cat."
    txt = write(tmp_path / "t.txt", "a photo of a {}.\n\nart of the {c}\n")
    assert load_templates(txt) == ["a photo of a {}.", "art of the {c}"]
    assert [format_template(t, "cat") for t in load_templates(txt)] == ["a photo of a cat.", "art of the cat"]
    js = write(tmp_path / "t.json", ["itap of a {}.", "a {} in the wild."])
    assert load_templates(js) == ["itap of a {}.", "a {} in the wild."]
    for name, content, needle in [
        ("noslot.txt", "a photo of a {}.\na photo\n", "slot"),
        ("empty.json", [], "non-empty"),
        ("bad.json", "[", "not valid JSON"),
    ]:
        bad = write(tmp_path / name, content)
        with pytest.raises(InputFileError, match=needle) as info:
            load_templates(bad)
        assert str(bad) in str(info.value)
    with pytest.raises(InputFileError, match="not found"):
        load_templates(tmp_path / "missing.txt")


# ==== embeddings =============================================================================================
@pytest.fixture(scope="module")
def backbone(tiny_openai_checkpoint: Path) -> Backbone:
    return create_backbone(f"openai:{tiny_openai_checkpoint}", pretrained=None, device="cpu")


def encode(backbone: Backbone, texts: list[str]) -> torch.Tensor:
    """Independent reference: the backbone itself."""
    return backbone.encode_text(list(texts))


def mean_norm(rows: torch.Tensor) -> torch.Tensor:
    total = torch.zeros(rows.shape[-1])
    for row in rows:
        total = total + row
    return total / total.norm()


def test_embed_cache_written_and_reused(backbone: Backbone, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    texts = ["a photo of a cat.", "a photo of a dog."]
    first = TextEmbedder(backbone, cache_dir=tmp_path).embed(texts)
    close(first, encode(backbone, texts))
    close(first.norm(dim=-1), torch.ones(2))
    files = list(tmp_path.rglob("*.safetensors"))
    assert len(files) == 1 and files[0].parent == tmp_path / "text"

    def boom(*args: object, **kwargs: object) -> torch.Tensor:
        raise AssertionError("encode_text called although the embeddings are cached")

    monkeypatch.setattr(backbone, "encode_text", boom)
    again = TextEmbedder(backbone, cache_dir=tmp_path).embed(texts)
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    with pytest.raises(AssertionError, match="cached"):  # different texts are not served from that file
        TextEmbedder(backbone, cache_dir=tmp_path).embed(["a photo of a bird."])
    monkeypatch.undo()
    TextEmbedder(backbone, cache_dir=tmp_path).embed(["a photo of a bird."])
    TextEmbedder(backbone, cache_dir=tmp_path).embed(list(reversed(texts)))
    assert len(list(tmp_path.rglob("*.safetensors"))) == 3


def _count_encode_calls(monkeypatch: pytest.MonkeyPatch, backbone: Backbone) -> list[list[str]]:
    """Record every list of texts ``backbone.encode_text`` is asked to encode (it still encodes them)."""
    calls: list[list[str]] = []
    real = backbone.encode_text

    def counting(texts: list[str], batch_size: int = 256) -> torch.Tensor:
        calls.append(list(texts))
        return real(texts, batch_size=batch_size)

    monkeypatch.setattr(backbone, "encode_text", counting)
    return calls


def test_embed_cache_separates_dtypes(backbone: Backbone, tiny_openai_checkpoint: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Same weights in fp16 give different embeddings: an fp32 cache entry must not be served to fp16."""
    half = create_backbone(f"openai:{tiny_openai_checkpoint}", pretrained=None, device="cpu", dtype="fp16")
    texts = ["a photo of a cat."]
    TextEmbedder(backbone, cache_dir=tmp_path).embed(texts)
    real = half.encode_text
    calls = _count_encode_calls(monkeypatch, half)
    out = TextEmbedder(half, cache_dir=tmp_path).embed(texts)
    assert calls == [texts]
    close(out, real(texts))
    assert len(list(tmp_path.rglob("*.safetensors"))) == 2


def test_embed_without_cache_dir_always_encodes(backbone: Backbone, monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    monkeypatch.setenv("ABSCLIP_CACHE", str(tmp_path / "default"))
    calls = _count_encode_calls(monkeypatch, backbone)
    embedder = TextEmbedder(backbone, cache_dir="")
    embedder.embed(["x"])
    embedder.embed(["x"])
    assert calls == [["x"], ["x"]]
    assert not (tmp_path / "default").exists()
    with pytest.raises(ValueError):
        embedder.embed([])


def test_embed_ragged_and_mean(backbone: Backbone) -> None:
    groups = [["red fur", "a tail", "whiskers"], ["wings"], ["fins", "scales"]]
    embedder = TextEmbedder(backbone, cache_dir="", batch_size=2)
    ragged = embedder.embed_ragged(groups)
    assert ragged.embeddings.shape == (3, 3, backbone.embed_dim)
    assert ragged.mask.tolist() == [[True, True, True], [True, False, False], [True, True, False]]
    assert ragged.counts.tolist() == [3, 1, 2]
    for c, group in enumerate(groups):
        for j, text in enumerate(group):  # each row is that text's own embedding
            close(ragged.embeddings[c, j], backbone.encode_text([text])[0])
        assert torch.all(ragged.embeddings[c, len(group) :] == 0)
    means = embedder.mean_embeddings(groups)
    assert means.shape == (3, backbone.embed_dim)
    for c, group in enumerate(groups):
        close(means[c], mean_norm(encode(backbone, group)))


# ==== text-side methods on a tiny CLIP =======================================================================
NAMES = ("cat", "dog", "sea lion")


def prepared(name: str, backbone: Backbone, descriptions: object = None, classes: tuple[str, ...] = NAMES,
             **options: object):
    class_list = ClassList(classes)
    desc = resolve_descriptions(class_list, descriptions) if descriptions is not None else None
    method = create_method(name, MethodOptions(**options))
    method.prepare(TextInputs(backbone, TextEmbedder(backbone, cache_dir=""), class_list, desc))
    return method


def check_scores(method, backbone: Backbone) -> None:
    gen = torch.Generator().manual_seed(0)
    full = torch.nn.functional.normalize(torch.randn(4, backbone.embed_dim, generator=gen), dim=-1)
    close(method.score(ViewSet(full=full)), full @ method.text.T)


def test_clip_method(backbone: Backbone) -> None:
    method = prepared("clip", backbone)
    close(method.text, encode(backbone, [f"a photo of a {n}." for n in NAMES]))
    check_scores(method, backbone)
    drawn = prepared("clip", backbone, template="a drawing of a {}.")
    close(drawn.text, encode(backbone, [f"a drawing of a {n}." for n in NAMES]))


def test_clip_e_method(backbone: Backbone, tmp_path: Path) -> None:
    two = write(tmp_path / "two.txt", "a photo of a {}.\nart of the {}.\n")
    method = prepared("clip-e", backbone, templates=str(two))
    expected = torch.stack([mean_norm(encode(backbone, [f"a photo of a {n}.", f"art of the {n}."])) for n in NAMES])
    close(method.text, expected)
    check_scores(method, backbone)
    # one template equal to the CLIP prompt: CLIP-E == CLIP
    one = write(tmp_path / "one.txt", "a photo of a {}.\n")
    close(prepared("clip-e", backbone, templates=str(one)).text, prepared("clip", backbone).text)


def test_clip_e_imagenet_templates(backbone: Backbone) -> None:
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    method = prepared("clip-e", backbone, classes=("cat",))
    expected = mean_norm(encode(backbone, [t("cat") for t in OPENAI_IMAGENET_TEMPLATES]))
    close(method.text[0], expected)


def test_clip_d_method(backbone: Backbone) -> None:
    data = {"cat": ["a long tail", "whiskers"], "dog": ["has four legs", "used for herding", "antennae"]}
    method = prepared("clip-d", backbone, data)
    expected = torch.stack([
        mean_norm(encode(backbone, ["cat, which is a long tail", "cat, which has whiskers"])),
        mean_norm(encode(backbone, ["dog, which has four legs", "dog, which is used for herding",
                                    "dog, which has antennae"])),
        encode(backbone, ["a photo of a sea lion."])[0],  # no descriptions: the plain CLIP prompt
    ])
    close(method.text, expected)
    check_scores(method, backbone)
    quirk = prepared("clip-d", backbone, data, clip_d_reference_quirk=True)
    close(quirk.text[1], mean_norm(encode(backbone, ["dog, which has four legs", "dog, which is used for herding",
                                                     "dog, which is antennae"])))
    close(quirk.text[0], expected[0])


def _design_sentence(d: str) -> str:
    """DESIGN.md §1 rule (no quirk), written out independently for the Waffle check."""
    if d.split()[0] in ("a", "an"):
        return f"which is {d}"
    if d.startswith(("has", "often", "typically", "may", "can")):
        return f"which {d}"
    if d.startswith("used"):
        return f"which is {d}"
    return f"which has {d}"


def test_waffle_method(backbone: Backbone) -> None:
    words = ["river", "stone", "cloud", "lemon", "tiger"]
    a = prepared("waffle", backbone, waffle_words=words, waffle_count=3, seed=7)
    b = prepared("waffle", backbone, waffle_words=words, waffle_count=3, seed=7)
    c = prepared("waffle", backbone, waffle_words=words, waffle_count=3, seed=8)
    torch.testing.assert_close(a.text, b.text, rtol=0, atol=0)
    assert not torch.allclose(a.text, c.text, atol=1e-4)
    descriptors = waffle_descriptors(3, 7, words)
    assert len(descriptors) == 6
    expected = torch.stack(
        [mean_norm(encode(backbone, [f"{n}, {_design_sentence(d)}" for d in descriptors])) for n in NAMES]
    )
    close(a.text, expected)
    check_scores(a, backbone)


def test_cupl_method(backbone: Backbone) -> None:
    data = {"cat": ["A cat is a small furry pet.", "Cats have whiskers."], "sea lion": ["A sea lion swims."]}
    method = prepared("cupl", backbone, data)
    expected = torch.stack([
        mean_norm(encode(backbone, data["cat"])),
        encode(backbone, ["a photo of a dog."])[0],  # missing entry: fallback prompt
        encode(backbone, data["sea lion"])[0],
    ])
    close(method.text, expected)
    check_scores(method, backbone)


def test_wca_text_side(backbone: Backbone) -> None:
    data = {"cat": ["whiskers", "a tail", "fur"], "dog": ["paws"], "sea lion": ["flippers", "whiskers"]}
    method = prepared("wca", backbone, data)
    for c, name in enumerate(NAMES):
        t = encode(backbone, data[name])
        prompt = encode(backbone, [f"a photo of a {name}."])[0]
        logits = [float(row @ prompt) * torch.e**2 for row in t]
        w = torch.softmax(torch.tensor(logits), dim=0)
        pooled = sum(w[j] * t[j] for j in range(len(t)))
        close(method.text[c], pooled / pooled.norm())


@pytest.mark.parametrize("name", ["abs", "mce"])
def test_per_description_methods_keep_ragged_embeddings(backbone: Backbone, name: str) -> None:
    data = {"cat": ["whiskers", "a tail", "fur"], "dog": ["paws"], "sea lion": ["flippers", "whiskers"]}
    method = prepared(name, backbone, data, max_descriptions=2)
    assert method.ragged.counts.tolist() == [2, 1, 2]
    for c, name_ in enumerate(NAMES):
        kept = data[name_][:2]
        close(method.ragged.embeddings[c, : len(kept)], encode(backbone, kept))


@pytest.mark.parametrize("name", ["clip-d", "cupl", "wca", "abs", "mce"])
def test_methods_needing_descriptions_raise(backbone: Backbone, name: str) -> None:
    method = create_method(name, MethodOptions())
    assert method.needs_descriptions
    with pytest.raises(InputFileError, match="descriptions"):
        method.prepare(TextInputs(backbone, TextEmbedder(backbone, cache_dir=""), ClassList(NAMES), None))


@pytest.mark.parametrize("name", ["clip", "clip-e", "waffle"])
def test_methods_without_descriptions(name: str) -> None:
    assert not create_method(name, MethodOptions()).needs_descriptions

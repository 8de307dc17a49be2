"""Tiny random transformers models of every ``hf:`` family, built in code and saved with ``save_pretrained``
together with an offline tokenizer and a ``preprocessor_config.json``, so that the real ``hf:`` loader reads
them back exactly as it reads a downloaded directory (no network, no pretrained weights).

Tokenizers are made here too: CLIP's BPE from the vocabulary file open_clip ships (CLIP, GroupViT), a
WordPiece from a written ``vocab.txt`` (ALIGN's and BLIP-2's BERT) and a tiny Unigram model trained with ``tokenizers``
on a few sentences (SentencePiece-style: SigLIP, SigLIP2, AltCLIP's XLM-R, MetaCLIP 2).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path

import torch

SENTENCES = ["a photo of a cat", "a photo of a dog", "a bird with feathers", "a small furry animal",
             "has whiskers and pointed ears", "barks loudly", "a loyal pet", "a photo of a"] * 4
WORDS = sorted({w for s in SENTENCES for w in s.split()})


# ---- tokenizers ---------------------------------------------------------------------------------------------
def clip_bpe(out: Path) -> int:
    """CLIP's byte-level BPE from open_clip's merges file; returns the vocabulary size."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe
    from transformers import CLIPTokenizer

    with gzip.open(default_bpe()) as handle:
        merges = handle.read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    pairs = [tuple(m.split()) for m in merges]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(p) for p in pairs] + ["<|startoftext|>", "<|endoftext|>"]
    work = out.parent / f"{out.name}_bpe"
    work.mkdir(parents=True, exist_ok=True)
    (work / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(p) for p in pairs) + "\n")
    (work / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}))
    CLIPTokenizer(vocab=str(work / "vocab.json"), merges=str(work / "merges.txt")).save_pretrained(out)
    return len(vocab)


def wordpiece(out: Path) -> int:
    """A BERT WordPiece tokenizer from a written ``vocab.txt`` (ALIGN, BLIP-2)."""
    from transformers import BertTokenizer

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = specials + WORDS + letters + [f"##{c}" for c in letters]
    work = out.parent / f"{out.name}_wp"
    work.mkdir(parents=True, exist_ok=True)
    (work / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(vocab=str(work / "vocab.txt")).save_pretrained(out)
    return len(vocab)


def unigram(out: Path, xlmr: bool = False) -> tuple[int, dict[str, int]]:
    """A tiny SentencePiece-style Unigram tokenizer trained on :data:`SENTENCES`.

    ``xlmr``: XLM-R's special tokens and ``<s> text </s>`` framing (AltCLIP, MetaCLIP 2); otherwise SigLIP's
    ``text </s>``. Returns the vocabulary size and the special token ids."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"] if xlmr else ["<pad>", "</s>", "<unk>"]
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(SENTENCES, trainers.UnigramTrainer(vocab_size=96, special_tokens=specials,
                                                                unk_token="<unk>"))
    ids = {s: tok.token_to_id(s) for s in specials}
    if xlmr:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", special_tokens=[("<s>", ids["<s>"]), ("</s>", ids["</s>"])])
    else:
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", ids["</s>"])])
    extra = {"bos_token": "<s>", "mask_token": "<mask>"} if xlmr else {}
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                            **extra).save_pretrained(out)
    return tok.get_vocab_size(), ids


def write_processor(out: Path, **settings: object) -> None:
    (out / "preprocessor_config.json").write_text(json.dumps(settings))


CLIP_PROCESSOR = {"image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": 32},
                  "do_center_crop": True, "crop_size": {"height": 32, "width": 32}, "resample": 3,
                  "do_normalize": True, "image_mean": [0.48145466, 0.4578275, 0.40821073],
                  "image_std": [0.26862954, 0.26130258, 0.27577711]}
SIGLIP_PROCESSOR = {"image_processor_type": "SiglipImageProcessor", "do_resize": True,
                    "size": {"height": 32, "width": 32}, "resample": 2, "do_normalize": True,
                    "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}


# ---- vision configs -----------------------------------------------------------------------------------------
VIT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 2,
       "image_size": 32, "patch_size": 8}


def _text(vocab: int, **extra: object) -> dict[str, object]:
    return {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
            "vocab_size": vocab, **extra}


# ---- families -----------------------------------------------------------------------------------------------
def _clip(out: Path) -> torch.nn.Module:
    from transformers import CLIPConfig, CLIPModel

    vocab = clip_bpe(out)
    write_processor(out, **CLIP_PROCESSOR)
    return CLIPModel(CLIPConfig(text_config=_text(vocab, max_position_embeddings=77), vision_config=VIT,
                                projection_dim=24))


def _metaclip_2(out: Path) -> torch.nn.Module:
    from transformers import MetaClip2Config, MetaClip2Model

    vocab, ids = unigram(out, xlmr=True)
    write_processor(out, **CLIP_PROCESSOR)
    text = _text(vocab, max_position_embeddings=77, pad_token_id=ids["<pad>"], bos_token_id=ids["<s>"],
                 eos_token_id=ids["</s>"])
    return MetaClip2Model(MetaClip2Config(text_config=text, vision_config=VIT, projection_dim=24))


def _altclip(out: Path) -> torch.nn.Module:
    from transformers import AltCLIPConfig, AltCLIPModel

    vocab, ids = unigram(out, xlmr=True)
    write_processor(out, **CLIP_PROCESSOR)
    text = _text(vocab, max_position_embeddings=40, pad_token_id=ids["<pad>"], project_dim=24,
                 type_vocab_size=1)
    return AltCLIPModel(AltCLIPConfig(text_config=text, vision_config=VIT, projection_dim=24))


def _siglip(out: Path) -> torch.nn.Module:
    from transformers import SiglipConfig, SiglipModel

    vocab, ids = unigram(out)
    write_processor(out, **SIGLIP_PROCESSOR)
    text = _text(vocab, max_position_embeddings=16, pad_token_id=ids["<pad>"], eos_token_id=ids["</s>"],
                 bos_token_id=ids["</s>"])
    return SiglipModel(SiglipConfig(text_config=text, vision_config=VIT))


def _siglip2(out: Path) -> torch.nn.Module:
    from transformers import Siglip2Config, Siglip2Model

    vocab, ids = unigram(out)
    write_processor(out, image_processor_type="Siglip2ImageProcessor", do_resize=True, patch_size=8,
                    max_num_patches=16, resample=2, do_normalize=True, image_mean=[0.5, 0.5, 0.5],
                    image_std=[0.5, 0.5, 0.5])
    vision = {k: v for k, v in VIT.items() if k != "image_size"} | {"num_patches": 16}
    text = _text(vocab, max_position_embeddings=16, pad_token_id=ids["<pad>"], eos_token_id=ids["</s>"],
                 bos_token_id=ids["</s>"])
    return Siglip2Model(Siglip2Config(text_config=text, vision_config=vision))


ALIGN_VISION = {"image_size": 32, "width_coefficient": 0.25, "depth_coefficient": 1.0, "depth_divisor": 8,
                "kernel_sizes": [3, 3, 3, 3], "in_channels": [32, 16, 24, 40], "out_channels": [16, 24, 40, 64],
                "strides": [1, 2, 1, 1], "num_block_repeats": [1, 1, 2, 2], "expand_ratios": [1, 2, 2, 2],
                "hidden_dim": 64}


def _align(out: Path) -> torch.nn.Module:
    from transformers import AlignConfig, AlignModel

    vocab = wordpiece(out)
    write_processor(out, image_processor_type="EfficientNetImageProcessor", do_resize=True,
                    size={"height": 32, "width": 32}, do_center_crop=False, resample=0, do_rescale=True,
                    rescale_factor=1 / 127.5, rescale_offset=True, do_normalize=True,
                    image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225], include_top=False)
    # the projection must land in the vision tower's channels (64 * width_coefficient, rounded to 8 -> 16)
    model = AlignModel(AlignConfig(text_config=_text(vocab, max_position_embeddings=40),
                                   vision_config=ALIGN_VISION, projection_dim=16))
    # ALIGN's init (std 0.02 convolutions behind BatchNorms) makes a tiny tower's output the same for every
    # image; He-initialised convolutions keep it image-dependent
    with torch.no_grad():
        for module in model.vision_model.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight)
    return model


GROUPVIT_VISION = {"hidden_size": 32, "intermediate_size": 64, "depths": [2, 1, 1], "num_group_tokens": [8, 4, 0],
                   "num_output_groups": [8, 4, 4], "num_hidden_layers": 4, "num_attention_heads": 2, "image_size": 32,
                   "patch_size": 8}


def _groupvit(out: Path) -> torch.nn.Module:
    from transformers import GroupViTConfig, GroupViTModel

    vocab = clip_bpe(out)
    write_processor(out, **CLIP_PROCESSOR)
    return GroupViTModel(GroupViTConfig(text_config=_text(vocab, max_position_embeddings=77),
                                        vision_config=GROUPVIT_VISION, projection_dim=24,
                                        projection_intermediate_dim=48))


def _blip2(out: Path) -> torch.nn.Module:
    from transformers import Blip2Config, Blip2ForImageTextRetrieval

    vocab = wordpiece(out)
    write_processor(out, image_processor_type="BlipImageProcessor", do_resize=True,
                    size={"height": 32, "width": 32}, resample=3, do_rescale=True, rescale_factor=1 / 255,
                    do_normalize=True, image_mean=[0.48145466, 0.4578275, 0.40821073],
                    image_std=[0.26862954, 0.26130258, 0.27577711], do_convert_rgb=True)
    vision = VIT | {"qkv_bias": True, "initializer_range": 0.02}  # its default 1e-10 makes every image alike
    qformer = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
               "vocab_size": vocab, "max_position_embeddings": 40, "encoder_hidden_size": VIT["hidden_size"],
               "cross_attention_frequency": 1, "use_qformer_text_input": True, "pad_token_id": 0}
    model = Blip2ForImageTextRetrieval(Blip2Config(vision_config=vision, qformer_config=qformer,
                                                   num_query_tokens=4, image_text_hidden_size=24))
    # the init leaves the learned queries at 0, so after the Q-Former's layernorm every query starts equal:
    # draw them, so that the Q query embeddings differ and the max over queries matters
    # and the queries' cross-attention is scaled up from its std-0.02 init, so that each image shows
    with torch.no_grad():
        model.query_tokens.normal_(0, 1)
        for name, param in model.qformer.named_parameters():
            if ".crossattention." in name and name.endswith("weight") and param.dim() == 2:
                param.mul_(5.0)
    return model


BUILDERS: dict[str, Callable[[Path], torch.nn.Module]] = {
    "clip": _clip, "metaclip_2": _metaclip_2, "altclip": _altclip, "siglip": _siglip, "siglip2": _siglip2,
    "align": _align, "groupvit": _groupvit, "blip-2": _blip2,
}
"""model_type -> builder of a seeded tiny random model (and its tokenizer and processor files) in a folder."""


def save_tiny(family: str, out: Path, seed: int = 0) -> Path:
    """Build the tiny ``family`` model into ``out`` (``save_pretrained``) and return ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = BUILDERS[family](out).eval()
    _spread_norms(model)
    model.save_pretrained(out)
    return out


def _spread_norms(model: torch.nn.Module) -> None:
    """Random init leaves every norm at weight 1 / bias 0 and BatchNorm statistics at 0 / 1: draw them, so a
    norm applied to the wrong tokens or skipped altogether changes the embedding."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.LayerNorm, torch.nn.BatchNorm2d)) and module.weight is not None:
                module.weight.copy_(1 + 0.3 * torch.randn(module.weight.shape, generator=g))
                module.bias.copy_(0.2 * torch.randn(module.bias.shape, generator=g))
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(0.1 * torch.randn(module.running_mean.shape, generator=g))
                module.running_var.copy_(1 + 0.2 * torch.rand(module.running_var.shape, generator=g))

"""``hf:DIR_OR_ID``: read ``model_type`` from ``config.json``, pick the family adapter, load its weights and
refuse to run on anything but a complete checkpoint.

transformers itself never refuses: weights it does not find are initialised at random and reported in a
log table (a GroupViT directory loaded as ``CLIPModel`` runs with a random vision tower and prints labels
as if nothing were wrong). Here a missing, unexpected or mis-shaped weight is an error that names the
directory, the model type and the first keys.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch

from ..errors import InputFileError, UnsupportedError, WeightsNotFoundError
from .checkpoints import checkpoint_errors, key_mismatch
from .hf_base import HF_FAMILIES, HFBackbone
from .hf_preprocess import read_processor_config, spec_from_processor


def _families() -> None:
    """Import every family module so that it registers itself (kept lazy: transformers is slow to import)."""
    from . import hf_align, hf_blip2, hf_clip, hf_groupvit, hf_siglip  # noqa: F401


def supported_model_types() -> list[str]:
    _families()
    return HF_FAMILIES.names()


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers prints its own table of missing keys; absclip raises its own one-line error instead."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def read_model_type(source: str, cache_dir: str | None) -> str:
    """``model_type`` of ``config.json`` in a directory or hub repository; one line when there is none."""
    from transformers import PretrainedConfig

    try:
        cfg, _ = PretrainedConfig.get_config_dict(source, cache_dir=cache_dir)
    except (OSError, ValueError) as exc:
        if Path(source).expanduser().is_dir():
            raise InputFileError(f"{source}: not a transformers model directory (no readable config.json: "
                                 f"{str(exc).splitlines()[0][:160]})") from exc
        raise
    model_type = cfg.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise InputFileError(f"{source}: config.json has no model_type; supported: "
                             f"{', '.join(supported_model_types())}")
    return model_type


def adapter_for(model_type: str, source: str) -> type[HFBackbone]:
    """The family adapter written for ``model_type``; an unsupported type lists the supported ones."""
    _families()
    if model_type not in HF_FAMILIES:
        raise UnsupportedError(f"{source}: transformers model type {model_type!r} is not supported by hf: "
                               f"(supported: {', '.join(HF_FAMILIES.names())}); pass a directory of one of "
                               "these, or an open_clip model with --model open_clip:ARCH --pretrained FILE")
    return HF_FAMILIES.get(model_type)  # type: ignore[return-value]


def load_complete(cls: type[HFBackbone], source: str, model_type: str, cache_dir: str | None) -> torch.nn.Module:
    """``cls.model_class.from_pretrained(source)``, and an error unless every weight came from the checkpoint."""
    import transformers

    model_class = getattr(transformers, cls.model_class)
    with _quiet_transformers(), checkpoint_errors(source):
        model, info = model_class.from_pretrained(source, cache_dir=cache_dir, output_loading_info=True)
    if model.config.model_type != model_type:  # a config class that rewrote the type: not what was asked for
        raise UnsupportedError(f"{source}: model type {model_type!r} loaded as {model.config.model_type!r}")
    missing = sorted(info.get("missing_keys") or [])
    unexpected = sorted(info.get("unexpected_keys") or [])
    shapes = [str(m[0]) if isinstance(m, (tuple, list)) else str(m) for m in info.get("mismatched_keys") or []]
    if missing or unexpected or shapes:
        what = key_mismatch(missing, unexpected, shapes)
        raise InputFileError(f"{source}: the checkpoint does not fit model type {model_type!r} "
                             f"({cls.model_class}): {what}; absclip never runs a model with randomly "
                             "initialised weights: pass a complete directory saved by save_pretrained")
    return model


def load_hf(source: str, device: torch.device, dtype: torch.dtype, cache_dir: str | None = None) -> HFBackbone:
    """``source``: a hub id or a local directory saved with ``save_pretrained``."""
    from .open_clip import hub_access, missing_weights_message

    local = Path(source).expanduser()
    is_local = local.is_dir()
    where = str(local) if is_local else source
    # a local directory needs no network; a hub id is fetched only if the hub answers one quick request
    with contextlib.nullcontext(None) if is_local else hub_access() as offline_reason:
        try:
            model_type = read_model_type(where, cache_dir)
            cls = adapter_for(model_type, where)
            model = load_complete(cls, where, model_type, cache_dir)
            tokenizer = _tokenizer(where, model_type, cache_dir)
            processor = read_processor_config(where, cache_dir)
        except OSError as exc:
            if is_local:
                raise WeightsNotFoundError(f"{local}: not a loadable transformers directory "
                                           f"({str(exc).splitlines()[0][:200]})") from exc
            raise WeightsNotFoundError(
                missing_weights_message(f"transformers {source}", cache_dir, offline_reason)) from exc
    default = cls.default_spec(model.config)
    spec = default if processor is None else spec_from_processor(processor, default, where)
    return cls(model, tokenizer, f"hf:{source}", device, dtype, spec)


def _tokenizer(where: str, model_type: str, cache_dir: str | None) -> object:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(where, cache_dir=cache_dir)
    except (OSError, ValueError, TypeError) as exc:
        raise InputFileError(f"{where}: the {model_type} directory has no loadable tokenizer "
                             f"({str(exc).splitlines()[0][:160]}); save it with tokenizer.save_pretrained") from exc

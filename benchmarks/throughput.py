"""Throughput of each method against a true bound, with random-initialised full-size models.

Builds the VLM (``--model``, default ViT-B/16 CLIP from open_clip; any open_clip architecture of any
family: ``open_clip:ViT-B-16-SigLIP2``, ``open_clip:EVA02-B-16``, ``open_clip:PE-Core-B-16``, ...) and DINO
ViT-B/16 (transformers) with random weights, saves them and loads them back through absclip's real loaders
(``--pretrained FILE``), then times on this machine's device. A text tower whose tokenizer lives on the hub
(SigLIP's) gets a small Unigram tokenizer trained here instead, so that no download is needed; other
specs (``hf:DIR``, ``openai:FILE``) are loaded as given. The FLOP bound below is ViT-B/16's, so it is
printed for the default model only:

* the FLOP bound: the exact work a method must do per image (``work_gflop``: ViT-B/16 at 224² is
  35.13 GFLOP; the final block of every sequence and DINO's last layer run the CLS query alone, as
  absclip does, since nothing else is read) divided by this machine's measured matmul rate (a 2048²
  matmul in the model's dtype on its device, on all threads, best of 10, measured inside each timed
  process before and after each timed run, the highest of these). Nothing can beat it without doing less
  work;
* the rate the encoder's own linear layers reach (one ViT-B/16 block's four, at the best micro-batch):
  how close this machine's GEMM comes to the 2048² rate on those shapes;
* the encoder alone on the B·N crops, at its best micro-batch (measured on a sample of crops);
* each method's whole pipeline (saliency, sampling, cropping, encoding, scoring), and pipeline / bound;
* peak resident memory above the loaded models, each measurement in its own process (on CUDA also the
  peak of allocated device memory);
* the reduced-precision path (bf16 on CPU, fp16 on CUDA) and its largest logit difference to fp32.

Usage:

    python benchmarks/throughput.py --batch 8 --crops 10,50 --methods abs [--micro-batch 8] [--repeats 3]
    python benchmarks/throughput.py --model open_clip:ViT-B-16-SigLIP2 --saliency clip --methods abs,clip
    python benchmarks/throughput.py --device cuda --dtype fp16 --crops 10,50   # benchmarks/gpu_check.sh
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def _reset_peak() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux)


DEFAULT_MODEL = "open_clip:ViT-B-16"


def build_models(root: Path, spec: str) -> tuple[str, str, Path]:
    """(model spec, its --pretrained file or "", DINO directory): an open_clip architecture is built at random
    init and saved (with a local tokenizer where its own is on the hub); other specs are used as given."""
    import open_clip
    from safetensors.torch import save_file
    from transformers import ViTConfig, ViTModel

    dino_dir = root / "dino_vitb16_random"
    if not dino_dir.exists():
        torch.manual_seed(1)
        ViTModel(ViTConfig(), add_pooling_layer=False).save_pretrained(dino_dir)
    source, sep, arch = spec.partition(":")
    if source != "open_clip" or not sep:
        return spec, "", dino_dir
    arch = offline_architecture(root, arch)
    clip_file = root / f"{arch}_random.safetensors"
    if not clip_file.exists():
        torch.manual_seed(0)
        model = open_clip.create_model(arch, pretrained=None)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(clip_file))
    return f"open_clip:{arch}", str(clip_file), dino_dir


def offline_architecture(root: Path, arch: str) -> str:
    """``arch``, or where its tokenizer is an hf hub one, a copy of its config (registered with open_clip from
    ``root/configs``) whose tokenizer is a Unigram model trained here on a few sentences."""
    import open_clip
    from open_clip.factory import get_model_config

    register_configs(root)
    cfg = get_model_config(arch)
    if cfg is None or "hf_tokenizer_name" not in cfg.get("text_cfg", {}):
        return arch
    name = f"{arch}-bench"
    target = root / "configs" / f"{name}.json"
    if not target.exists():
        from tokenizers import Tokenizer, models, pre_tokenizers, trainers
        from transformers import PreTrainedTokenizerFast

        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.train_from_iterator([f"class {i} with feature {j}" for i in range(50) for j in range(5)],
                                trainers.UnigramTrainer(vocab_size=200, special_tokens=["<pad>", "</s>", "<unk>"],
                                                        unk_token="<unk>"))
        PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                unk_token="<unk>").save_pretrained(root / "tokenizer")
        cfg["text_cfg"] = {**cfg["text_cfg"], "hf_tokenizer_name": str(root / "tokenizer")}
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(cfg))
        open_clip.add_model_config(target.parent)
    return name


def register_configs(root: Path) -> None:
    import open_clip

    if (root / "configs").is_dir():
        open_clip.add_model_config(root / "configs")


def make_images(batch: int) -> list[torch.Tensor]:
    rng = np.random.default_rng(0)
    sizes = [(500, 375), (375, 500), (640, 480), (333, 500)]
    return [torch.from_numpy(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).permute(2, 0, 1).contiguous()
            for w, h in (sizes[i % len(sizes)] for i in range(batch))]


# ---- the FLOP bound --------------------------------------------------------------------------------
WIDTH, LAYERS, MLP, TOKENS, PATCH_IN, EMBED = 768, 12, 3072, 197, 3 * 16 * 16, 512  # ViT-B/16 at 224²


def block_gflop(queries: int, tokens: int = TOKENS, width: int = WIDTH, mlp: int = MLP) -> float:
    """One pre-norm transformer block where ``queries`` of ``tokens`` rows are computed (all, or CLS only):
    Q for the queries, K and V for every token, scores and mixing, output projection and MLP."""
    q = 2 * queries * width * width
    kv = 2 * tokens * width * 2 * width
    attention = 2 * 2 * queries * tokens * width
    out = 2 * queries * width * width + 2 * queries * width * mlp * 2
    return (q + kv + attention + out) / 1e9


PATCH_EMBED = 2 * (TOKENS - 1) * PATCH_IN * WIDTH / 1e9
TRUNK = PATCH_EMBED + (LAYERS - 1) * block_gflop(TOKENS)  # everything before the last block
ENCODE_CLS = TRUNK + block_gflop(1)  # an image embedding: the last block on the CLS query only
DINO_ROW = TRUNK + (2 * WIDTH * WIDTH + 2 * TOKENS * WIDTH * WIDTH + 2 * TOKENS * WIDTH) / 1e9  # q_CLS, K, QKᵀ


def work_gflop(method: str, crops: int, classes: int, descriptions: int) -> float:
    """The work ``method`` must do per image (DESIGN.md §5 and shared/PERF.md), in GFLOP."""
    soft_match = 2 * crops * classes * descriptions * EMBED * 2 / 1e9
    if method == "abs":  # DINO row; CLIP trunk once; N windows + the full image finish; N raw crops
        return DINO_ROW + TRUNK + (crops + 1) * block_gflop(1) + crops * ENCODE_CLS + soft_match
    if method in ("mce", "wca"):  # the full image and K random crops as images
        return (crops + 1) * ENCODE_CLS + soft_match / 2
    return ENCODE_CLS + 2 * classes * EMBED / 1e9


def matmul_gflops(device: torch.device, dtype: torch.dtype, size: int = 2048, repeats: int = 10) -> float:
    """The matmul rate of ``device`` in ``dtype`` (on the CPU: all threads), best of ``repeats``."""
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    a @ b  # warm-up
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def linear_gflops(tokens: int, device: torch.device, dtype: torch.dtype, repeats: int = 3) -> float:
    """The rate of one ViT-B/16 block's four linear layers (QKV, output, MLP in and out) on ``tokens`` rows:
    what this machine's GEMM makes of the encoder's own shapes, to set beside the 2048² rate."""
    torch.manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=device, dtype=dtype)

    x, h = rand(tokens, WIDTH), rand(tokens, MLP)
    layers = [(x, rand(3 * WIDTH, WIDTH)), (x, rand(WIDTH, WIDTH)), (x, rand(MLP, WIDTH)), (h, rand(WIDTH, MLP))]
    biases = [rand(w.shape[0]) for _, w in layers]

    def run() -> None:
        for (inp, w), b in zip(layers, biases, strict=True):
            torch.nn.functional.linear(inp, w, b)

    run()  # warm-up
    best = min(_timed(run) for _ in range(repeats))
    return sum(2 * tokens * w.shape[0] * w.shape[1] for _, w in layers) / best / 1e9


def sync() -> None:
    """Wait for queued CUDA work (kernels run asynchronously), so that a wall time covers it."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(fn: object) -> float:
    """Wall time of ``fn()``, CUDA work included."""
    sync()
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    sync()
    return time.perf_counter() - start


def run_part(args: argparse.Namespace) -> dict[str, float]:
    """One measurement in this process; prints a JSON line."""
    from absclip import MethodOptions, ZeroShotClassifier, create_backbone
    from absclip.text import ClassList, resolve_descriptions
    from absclip.views import AbsSamplerConfig, RandomCropConfig

    torch.set_grad_enabled(False)
    dino_dir = Path(args.dino_dir)
    register_configs(dino_dir.parent)
    backbone = create_backbone(args.model, pretrained=args.clip_file or None, device=args.device, dtype=args.dtype)
    size = backbone.preprocess.size
    images = make_images(args.batch)
    n = args.crops
    if args.part == "encoder":  # the encoder alone on a sample of crops, at each micro-batch
        sample = torch.randn(args.encoder_sample, 3, size, size, device=backbone.device, dtype=backbone.dtype)
        backbone.encode_image(sample[:2])  # warm-up
        per_crop = {}
        for step in (4, 8, 16, 32, 64):
            elapsed = min(_timed(lambda s=step: [backbone.encode_image(sample[i : i + s])
                                                 for i in range(0, len(sample), s)]) for _ in range(args.repeats))
            per_crop[str(step)] = elapsed / len(sample)
        out = {"per_crop": per_crop}
        if args.measure_rate:
            best = int(min(per_crop, key=per_crop.get))
            where = (backbone.device, backbone.dtype)
            out |= {"rate": matmul_gflops(*where), "linear_rate": linear_gflops(best * TOKENS, *where)}
        return out  # type: ignore[return-value]
    classes = ClassList(tuple(f"class {i}" for i in range(args.classes)))
    descriptions = resolve_descriptions(classes, {c: [f"{c} with feature {j}" for j in range(args.descriptions)]
                                                  for c in classes.names})
    saliency = f"dino:{dino_dir}" if args.saliency == "dino" else args.saliency
    options = MethodOptions(saliency=saliency, micro_batch=args.micro_batch or None,
                            abs_sampler=AbsSamplerConfig(crops=n), random_crops=RandomCropConfig(crops=n))
    clf = ZeroShotClassifier(backbone, args.part, classes, descriptions, options=options,
                             cache_dir=str(Path(args.clip_file).parent / "text-cache") if args.clip_file else "",
                             batch_size=args.batch)
    clf.predict(images[:1], keys=["warm-up"])
    # the fastest of --repeats timed runs, set against the highest matmul rate measured around them (the
    # strictest bound): on a shared machine both drift from run to run
    elapsed, peak, rates = float("inf"), 0.0, []
    on_cuda = backbone.device.type == "cuda"
    if on_cuda:
        torch.cuda.reset_peak_memory_stats(backbone.device)
    gpu_base = torch.cuda.memory_allocated(backbone.device) if on_cuda else 0
    keys = [f"img{i}" for i in range(len(images))]
    for _ in range(args.repeats):
        if args.measure_rate:
            rates.append(matmul_gflops(backbone.device, backbone.dtype))
        _reset_peak()
        base = _rss_kib("VmRSS")
        sync()
        start = time.perf_counter()
        pred = clf.predict(images, keys=keys)
        sync()
        elapsed = min(elapsed, time.perf_counter() - start)
        peak = max(peak, (_rss_kib("VmHWM") - base) / 1024)
    if args.measure_rate:
        rates.append(matmul_gflops(backbone.device, backbone.dtype))
    out = {"seconds": elapsed, "peak_mib": peak, "rate": max(rates, default=float("nan"))}
    if on_cuda:
        out["gpu_peak_mib"] = (torch.cuda.max_memory_allocated(backbone.device) - gpu_base) / 2**20
    if args.save_logits:
        torch.save({"logits": pred.logits, "plans": [p.to_json() for p in pred.plans]}, args.save_logits)
    return out


def spawn(part: str, args: argparse.Namespace, crops: int, **extra: object) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--part", part, "--model", args.model, "--saliency", args.saliency,
           "--batch", str(args.batch), "--crops", str(crops),
           "--micro-batch", str(args.micro_batch), "--clip-file", args.clip_file, "--dino-dir", args.dino_dir,
           "--device", args.device, "--dtype", args.dtype, "--classes", str(args.classes),
           "--descriptions", str(args.descriptions),
           "--encoder-sample", str(args.encoder_sample), "--repeats", str(args.repeats)]
    if args.measure_rate:
        cmd.append("--measure-rate")
    for key, value in extra.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{part} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL, help="VLM spec, any family (default: %(default)s)")
    p.add_argument("--saliency", default="dino", help="dino (a random DINO ViT-B/16), clip or uniform")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crops", default="10,50", help="comma list of N (crops per image) (default: %(default)s)")
    p.add_argument("--micro-batch", type=int, default=0, help="crops per encoder call (0: the library default)")
    p.add_argument("--methods", default="abs", help="comma list of methods to time (default: %(default)s)")
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--descriptions", type=int, default=50)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--encoder-sample", type=int, default=64, help="crops timed per micro-batch for the encoder")
    p.add_argument("--repeats", type=int, default=1,
                   help="timed runs per measurement, the fastest reported (default: %(default)s)")
    p.add_argument("--low-precision-batch", type=int, default=2, help="images for the bf16/fp16 comparison (0: skip)")
    p.add_argument("--part", default=None, help=argparse.SUPPRESS)
    p.add_argument("--clip-file", default=None, help=argparse.SUPPRESS)
    p.add_argument("--dino-dir", default=None, help=argparse.SUPPRESS)
    p.add_argument("--save-logits", default=None, help=argparse.SUPPRESS)
    p.add_argument("--measure-rate", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    if args.part:
        args.crops = int(args.crops)
        print(json.dumps(run_part(args)))
        return
    crop_counts = [int(n) for n in args.crops.split(",")]
    root = Path(os.environ.get("ABSCLIP_BENCH_DIR", Path(tempfile.gettempdir()) / "absclip-bench"))
    root.mkdir(parents=True, exist_ok=True)
    args.model, args.clip_file, dino_dir = build_models(root, args.model)
    args.dino_dir = str(dino_dir)
    # the matmul rate is measured inside each timed process, around each of its timed runs (see run_part),
    # since a shared machine's rate drifts between processes
    args.measure_rate = args.model == DEFAULT_MODEL
    print(f"model {args.model}, saliency {args.saliency}")
    gpu = f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else ""
    print(f"device {args.device}{gpu}, torch {torch.__version__}, {torch.get_num_threads()} threads, {args.dtype}; "
          f"batch {args.batch}, N in {crop_counts}, micro-batch {args.micro_batch or 'default'}, "
          f"{args.classes} classes × {args.descriptions} descriptions")
    encoder = spawn("encoder", args, crop_counts[0])
    per_crop = encoder["per_crop"]
    best_step = min(per_crop, key=per_crop.get)
    print("encoder alone, s/crop by micro-batch: " + ", ".join(f"{k}: {v:.4f}" for k, v in per_crop.items())
          + f" (best {best_step})")
    if args.measure_rate:
        share = encoder["linear_rate"] / encoder["rate"]
        print(f"{args.dtype} matmul rate (2048²): {encoder['rate']:.1f} GFLOP/s; the encoder's linear layers at "
              f"micro-batch {best_step}: {encoder['linear_rate']:.1f} GFLOP/s ({share:.0%})")
    print("| method | N | pipeline s/img | img/s | matmul rate GFLOP/s | FLOP bound s/img | pipeline / bound | "
          "encoder alone (B·N crops, best micro-batch) s/img | peak memory |")
    print("|---|---|---|---|---|---|---|---|---|")
    for method in args.methods.split(","):
        for n in crop_counts if method in ("abs", "mce", "wca") else crop_counts[:1]:
            res = spawn(method, args, n)
            per_image = res["seconds"] / args.batch
            bound = work_gflop(method, n, args.classes, args.descriptions) / res["rate"]
            enc = n * per_crop[best_step] if method in ("abs", "mce", "wca") else per_crop[best_step]
            print(f"| {method} | {n} | {per_image:.3f} | {1 / per_image:.3f} | {res['rate']:.1f} | {bound:.3f} | "
                  f"**{per_image / bound:.3f}** | {enc:.3f} | +{res['peak_mib']:.0f} MiB"
                  + (f" (GPU +{res['gpu_peak_mib']:.0f} MiB)" if "gpu_peak_mib" in res else "") + " |")
    if args.low_precision_batch:
        low = "fp16" if args.device.startswith("cuda") else "bf16"
        small = argparse.Namespace(**{**vars(args), "batch": args.low_precision_batch})
        with tempfile.TemporaryDirectory() as tmp:
            ref = spawn("abs", small, crop_counts[-1], dtype="fp32", save_logits=f"{tmp}/fp32.pt")
            lowres = spawn("abs", small, crop_counts[-1], dtype=low, save_logits=f"{tmp}/low.pt")
            a, b = torch.load(f"{tmp}/fp32.pt"), torch.load(f"{tmp}/low.pt")
        diff = (a["logits"] - b["logits"]).abs().max().item()
        same = (a["logits"].argmax(1) == b["logits"].argmax(1)).float().mean().item()
        print(f"abs {low} (N={crop_counts[-1]}): {small.batch / lowres['seconds']:.3f} img/s vs fp32 "
              f"{small.batch / ref['seconds']:.3f} img/s; max |logit diff| {diff:.4f} (logits are sums over "
              f"{2 * crop_counts[-1]} views of similarities / 0.03); same top-1 {same:.0%}")


if __name__ == "__main__":
    main()

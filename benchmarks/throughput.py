"""Throughput of each method vs the compute floor, with random-initialised full-size models.

Builds ViT-B/16 CLIP (open_clip) and DINO ViT-B/16 (transformers) with random weights, saves them and
loads them back through absclip's real loaders, then times on this machine's device:

* each method's whole pipeline (saliency, sampling, cropping, encoding, scoring) in images/second;
* the compute floor: one batched encoder pass over B·(N+1) images + one DINO pass over B images + one
  full final block over B·N sequences, with no sampling, cropping or scoring;
* pipeline time / floor time, and peak resident memory above the loaded models for each;
* the reduced-precision path (bf16 on CPU, fp16 on CUDA) and its largest logit difference to fp32.

Each measurement runs in its own process so peak memory is its own. Usage:

    python benchmarks/throughput.py --batch 8 --crops 50 [--methods abs,mce] [--micro-batch 8]
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


def build_models(root: Path) -> tuple[Path, Path]:
    import open_clip
    from safetensors.torch import save_file
    from transformers import ViTConfig, ViTModel

    clip_file = root / "vit_b16_random.safetensors"
    dino_dir = root / "dino_vitb16_random"
    if not clip_file.exists():
        torch.manual_seed(0)
        model = open_clip.create_model("ViT-B-16", pretrained=None)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(clip_file))
    if not dino_dir.exists():
        torch.manual_seed(1)
        ViTModel(ViTConfig(), add_pooling_layer=False).save_pretrained(dino_dir)
    return clip_file, dino_dir


def make_images(batch: int) -> list[torch.Tensor]:
    rng = np.random.default_rng(0)
    sizes = [(500, 375), (375, 500), (640, 480), (333, 500)]
    return [torch.from_numpy(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).permute(2, 0, 1).contiguous()
            for w, h in (sizes[i % len(sizes)] for i in range(batch))]


def run_part(args: argparse.Namespace) -> dict[str, float]:
    """One measurement in this process; prints a JSON line."""
    from absclip import MethodOptions, ZeroShotClassifier, create_backbone
    from absclip.attention import create_saliency
    from absclip.text import ClassList, resolve_descriptions
    from absclip.views import AbsSamplerConfig, RandomCropConfig

    torch.set_grad_enabled(False)
    clip_file, dino_dir = Path(args.clip_file), Path(args.dino_dir)
    backbone = create_backbone("open_clip:ViT-B-16", pretrained=str(clip_file), device=args.device, dtype=args.dtype)
    images = make_images(args.batch)
    n = args.crops
    if args.part == "floor":
        dino = create_saliency(f"dino:{dino_dir}", backbone)
        pixels = torch.randn(args.batch * (n + 1), 3, 224, 224, device=backbone.device, dtype=backbone.dtype)
        dino_px = torch.randn(args.batch, 3, 224, 224, device=backbone.device)
        last = backbone._blocks()[-1]
        seqs = torch.randn(args.batch * n, 197, 768, device=backbone.device, dtype=backbone.dtype)
        backbone.model.encode_image(pixels[:2])  # warm-up
        _reset_peak()
        base = _rss_kib("VmRSS")
        start = time.perf_counter()
        backbone.model.encode_image(pixels)
        dino.attention_from_pixels(dino_px)
        last(seqs)
        elapsed = time.perf_counter() - start
        return {"seconds": elapsed, "peak_mib": (_rss_kib("VmHWM") - base) / 1024}
    classes = ClassList(tuple(f"class {i}" for i in range(args.classes)))
    descriptions = resolve_descriptions(classes, {c: [f"{c} with feature {j}" for j in range(args.descriptions)]
                                                  for c in classes.names})
    options = MethodOptions(saliency=f"dino:{dino_dir}", micro_batch=args.micro_batch or None,
                            abs_sampler=AbsSamplerConfig(crops=n), random_crops=RandomCropConfig(crops=n))
    clf = ZeroShotClassifier(backbone, args.part, classes, descriptions, options=options, cache_dir="",
                             batch_size=args.batch)
    clf.predict(images[:1], keys=["warm-up"])
    _reset_peak()
    base = _rss_kib("VmRSS")
    start = time.perf_counter()
    pred = clf.predict(images, keys=[f"img{i}" for i in range(len(images))])
    elapsed = time.perf_counter() - start
    out = {"seconds": elapsed, "peak_mib": (_rss_kib("VmHWM") - base) / 1024}
    if args.save_logits:
        torch.save({"logits": pred.logits, "plans": [p.to_json() for p in pred.plans]}, args.save_logits)
    return out


def spawn(part: str, args: argparse.Namespace, **extra: object) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--part", part, "--batch", str(args.batch), "--crops", str(args.crops),
           "--micro-batch", str(args.micro_batch), "--clip-file", args.clip_file, "--dino-dir", args.dino_dir,
           "--device", args.device, "--classes", str(args.classes), "--descriptions", str(args.descriptions)]
    for key, value in extra.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{part} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crops", type=int, default=50)
    p.add_argument("--micro-batch", type=int, default=0, help="crops per encoder call (0: the library default)")
    p.add_argument("--methods", default="clip,clip-e,clip-d,waffle,cupl,wca,mce,abs",
                   help="comma list of methods to time (default: all)")
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--descriptions", type=int, default=50)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--low-precision-batch", type=int, default=2, help="images for the bf16/fp16 comparison (0: skip)")
    p.add_argument("--part", default=None, help=argparse.SUPPRESS)
    p.add_argument("--clip-file", default=None, help=argparse.SUPPRESS)
    p.add_argument("--dino-dir", default=None, help=argparse.SUPPRESS)
    p.add_argument("--save-logits", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.part:
        print(json.dumps(run_part(args)))
        return
    root = Path(os.environ.get("ABSCLIP_BENCH_DIR", Path(tempfile.gettempdir()) / "absclip-bench"))
    root.mkdir(parents=True, exist_ok=True)
    clip_file, dino_dir = build_models(root)
    args.clip_file, args.dino_dir = str(clip_file), str(dino_dir)
    print(f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads; batch {args.batch}, "
          f"N={args.crops}, micro-batch {args.micro_batch or 'default'}, {args.classes} classes × "
          f"{args.descriptions} descriptions")
    floor = spawn("floor", args)
    print(f"floor   {floor['seconds']:8.2f} s  {args.batch / floor['seconds']:7.3f} img/s  "
          f"peak +{floor['peak_mib']:.0f} MiB")
    for method in args.methods.split(","):
        res = spawn(method, args)
        ratio = res["seconds"] / floor["seconds"]
        print(f"{method:7s} {res['seconds']:8.2f} s  {args.batch / res['seconds']:7.3f} img/s  "
              f"peak +{res['peak_mib']:.0f} MiB  pipeline/floor {ratio:.3f}")
    if args.low_precision_batch:
        low = "fp16" if args.device.startswith("cuda") else "bf16"
        small = argparse.Namespace(**{**vars(args), "batch": args.low_precision_batch})
        with tempfile.TemporaryDirectory() as tmp:
            ref = spawn("abs", small, save_logits=f"{tmp}/fp32.pt")
            lowres = spawn("abs", small, dtype=low, save_logits=f"{tmp}/low.pt")
            a, b = torch.load(f"{tmp}/fp32.pt"), torch.load(f"{tmp}/low.pt")
        diff = (a["logits"] - b["logits"]).abs().max().item()
        same = (a["logits"].argmax(1) == b["logits"].argmax(1)).float().mean().item()
        print(f"abs {low}: {small.batch / lowres['seconds']:.3f} img/s vs fp32 "
              f"{small.batch / ref['seconds']:.3f} img/s; "
              f"max |logit diff| {diff:.4f} (logits are sums over {2 * args.crops} views of similarities / 0.03); "
              f"same top-1 {same:.0%}")


if __name__ == "__main__":
    main()

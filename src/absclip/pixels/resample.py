"""Batched crop + resize that reproduces the VLM's PIL preprocessing on tensors, on any device.

Pillow resizes with separable filters whose support widens with the downscale factor (antialiasing);
for a crop box that is a pair of weight matrices Wy [S, H] and Wx [S, W] over the whole image, zero
outside the box. Building them for all N boxes at once turns N PIL crops + resizes into two batched
matrix products. Shortest-side resize + centre crop only selects which output rows/columns to keep.
With ``quantize`` the arithmetic is Pillow's 8-bit one: coefficients in 22-bit fixed point, each pass
rounded half up and clipped to 0..255, the vertical pass first where Pillow runs it first (the height
shrinks more than twice as much as the width). The fixed-point sums are integers below 2^53, so in
float64 they are exact and the result equals the PIL path (tests/test_views.py measures it).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .spec import PreprocessSpec

_SUPPORT = {"bicubic": 2.0, "bilinear": 1.0}
_PRECISION_BITS = 22  # Pillow's 8-bit resampling: 32 - 8 - 2 fractional bits


def _filter(name: str, x: torch.Tensor) -> torch.Tensor:
    x = x.abs()
    if name == "bilinear":
        return (1.0 - x).clamp(min=0.0)
    a = -0.5  # Pillow's bicubic
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return torch.where(x < 1.0, near, torch.where(x < 2.0, far, torch.zeros_like(x)))


def resize_weights(
    start: torch.Tensor, length: torch.Tensor, resized: torch.Tensor, offset: torch.Tensor,
    out_size: int, in_size: int, filter_name: str,
) -> torch.Tensor:
    """Pillow's resampling coefficients for N boxes along one axis, as dense rows over the full axis.

    The box ``[start, start+length)`` is resized to ``resized`` pixels, of which outputs
    ``offset .. offset+out_size-1`` are kept. All arguments are [N] float64 tensors. -> [N, out_size, in_size].
    """
    dev = start.device
    scale = (length / resized)[:, None]  # [N, 1]
    filterscale = scale.clamp(min=1.0)
    support = _SUPPORT[filter_name] * filterscale
    xx = offset[:, None] + torch.arange(out_size, device=dev, dtype=torch.float64)[None, :]  # [N, S]
    center = (xx + 0.5) * scale  # box-relative
    xmin = torch.trunc(center - support + 0.5).clamp(min=0.0)  # Pillow: (int)(center - support + 0.5)
    xmax = torch.minimum(torch.trunc(center + support + 0.5), length[:, None])
    # only the taps inside each output pixel's support are evaluated: [N, S, K], K = Pillow's kernel size
    taps = int(torch.ceil(support.max()).item()) * 2 + 1
    x = xmin[..., None] + torch.arange(taps, device=dev, dtype=torch.float64)  # box-relative source pixel
    valid = x < xmax[..., None]
    w = _filter(filter_name, (x - center[..., None] + 0.5) * (1.0 / filterscale)[..., None]) * valid
    total = w.sum(dim=-1, keepdim=True)
    w = torch.where(total != 0, w / total, w)
    index = (x + start[:, None, None]).clamp(0, in_size - 1).long()
    return torch.zeros(*w.shape[:2], in_size, dtype=w.dtype, device=dev).scatter_add_(2, index, w)


def _axis_plan(box_start: torch.Tensor, box_len: torch.Tensor, other_len: torch.Tensor,
               spec: PreprocessSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Resized length and centre-crop offset along one axis (torchvision Resize(int) + CenterCrop)."""
    size = spec.size
    if spec.resize_mode == "squash":
        return torch.full_like(box_len, float(size)), torch.zeros_like(box_len)
    short = torch.minimum(box_len, other_len)
    # torchvision: new_long = int(size * long / short); the short side becomes exactly `size`
    resized = torch.where(box_len <= other_len, torch.full_like(box_len, float(size)),
                          torch.floor(size * box_len / short))
    offset = torch.round((resized - size) / 2.0)  # CenterCrop: int(round((h - crop) / 2.0))
    return resized, offset


WORKSPACE_BYTES = 256 * 2**20  # bound on the per-chunk weight matrices and intermediate of crop_resize


def crop_resize(
    image: torch.Tensor, boxes: torch.Tensor, spec: PreprocessSpec, quantize: bool = True,
    normalize: bool = True,
) -> torch.Tensor:
    """Cut ``boxes`` [N, 4] (x0, y0, x1, y1; pixels, end-exclusive) out of ``image`` [3, H, W] (uint8 or
    float in 0..255) and preprocess each as the VLM would a PIL crop. -> [N, 3, S, S] float32.

    Boxes are processed in chunks sized so the float64 work tensors stay under ``WORKSPACE_BYTES``
    (one chunk for ordinary photos; several for very large images)."""
    _, height, width = image.shape
    per_box = 8 * spec.size * (3 * max(height, width) + height + width)  # bytes: intermediate + weights
    step = max(1, WORKSPACE_BYTES // per_box)
    if len(boxes) > step:
        return torch.cat([crop_resize(image, boxes[i : i + step], spec, quantize, normalize)
                          for i in range(0, len(boxes), step)])
    # only the union of the boxes is ever read (each box is resized on its own pixels): work on that part
    lo = [int(v) for v in boxes[:, :2].min(dim=0).values.tolist()]
    hi = [int(v) for v in boxes[:, 2:].max(dim=0).values.tolist()]
    if lo != [0, 0] or hi != [width, height]:
        image = image[:, lo[1] : hi[1], lo[0] : hi[0]]
        boxes = boxes - torch.tensor([lo[0], lo[1], lo[0], lo[1]], dtype=boxes.dtype, device=boxes.device)
        _, height, width = image.shape
    dev = image.device
    b = boxes.to(dev, torch.float64)
    x0, y0, bw, bh = b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    rw, ox = _axis_plan(x0, bw, bh, spec)
    rh, oy = _axis_plan(y0, bh, bw, spec)
    filt = spec.interpolation if spec.interpolation in _SUPPORT else "bicubic"
    wx = resize_weights(x0, bw, rw, ox, spec.size, width, filt)  # [N, S, W]
    wy = resize_weights(y0, bh, rh, oy, spec.size, height, filt)  # [N, S, H]
    if quantize:
        out = _pillow_8bit(image, wx, wy, vertical_first=(bh - rh > 0) & (bh - rh > 2 * (bw - rw)))
    else:
        tmp = torch.einsum("chw,nsw->nchs", image.float(), wx.float())  # [N, 3, H, S]
        out = torch.einsum("nth,nchs->ncts", wy.float(), tmp)  # [N, 3, S, S]
    out = out / 255.0
    if normalize:
        mean = torch.tensor(spec.mean, device=dev).view(1, 3, 1, 1)
        std = torch.tensor(spec.std, device=dev).view(1, 3, 1, 1)
        out = (out - mean) / std
    return out


def _fixed_point(w: torch.Tensor) -> torch.Tensor:
    """Pillow's 8-bit coefficients: w·2^22 rounded half away from zero (integers, as float64)."""
    return (w * (1 << _PRECISION_BITS)).add_(w.sign().mul_(0.5)).trunc_()


def _round8(acc: torch.Tensor) -> torch.Tensor:
    """Pillow's clip8: (acc + 2^21) >> 22, clipped to 0..255."""
    return acc.add_(1 << (_PRECISION_BITS - 1)).mul_(2.0**-_PRECISION_BITS).floor_().clamp_(0, 255)


def _pillow_8bit(image: torch.Tensor, wx: torch.Tensor, wy: torch.Tensor,
                 vertical_first: torch.Tensor) -> torch.Tensor:
    """Both passes in Pillow's fixed-point arithmetic (exact in float64), in Pillow's pass order. -> [N, 3, S, S]."""
    img = image.double()
    kx, ky = _fixed_point(wx), _fixed_point(wy)
    out = torch.empty(len(kx), 3, ky.shape[1], kx.shape[1], dtype=torch.float32, device=image.device)
    vertical_first = vertical_first.to(image.device)
    for sel, vertical in ((~vertical_first, False), (vertical_first, True)):
        if not sel.any():
            continue
        px, py = (kx, ky) if sel.all() else (kx[sel], ky[sel])
        if vertical:
            tmp = _round8(torch.einsum("nth,chw->nctw", py, img))  # [n, 3, S, W]
            res = _round8(torch.einsum("nctw,nsw->ncts", tmp, px))
        else:
            tmp = _round8(torch.einsum("chw,nsw->nchs", img, px))  # [n, 3, H, S]
            res = _round8(torch.einsum("nth,nchs->ncts", py, tmp))
        out[sel] = res.float()
    return out


def full_box(image: torch.Tensor) -> torch.Tensor:
    """The box covering the whole image, [1, 4]."""
    return torch.tensor([[0, 0, image.shape[2], image.shape[1]]])


def preprocess_images(images: Sequence[torch.Tensor], spec: PreprocessSpec) -> torch.Tensor:
    """Whole images [3, H, W] of any sizes, preprocessed as the model would PIL images. -> [B, 3, S, S]."""
    return torch.cat([crop_resize(im, full_box(im), spec) for im in images])

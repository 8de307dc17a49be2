"""Batched crop + resize that reproduces the VLM's PIL preprocessing on tensors, on any device.

Pillow resizes with separable filters whose support widens with the downscale factor (antialiasing).
For a crop box each output pixel reads a short run of input pixels, so one pass is a matrix product
with a banded weight matrix; building those matrices for all N boxes at once turns N PIL crops +
resizes into two batched matrix products. Shortest-side resize + centre crop only selects which
output rows/columns to keep.

Memory is bounded by the *support* of the kept outputs, never by the image's sides: the weight
matrices span only the input pixels the kept outputs read (a 1×3,000,000 image whose centre crop reads
three pixels gets 3-column matrices), and when even one box's matrices would outgrow
``WORKSPACE_BYTES`` (a squash of a very long side) its outputs are processed in tiles, each with the
weights of its own input run. Boxes are grouped so that each group's work fits the same bound.

With ``quantize`` the arithmetic is Pillow's 8-bit one: coefficients in 22-bit fixed point, each pass
rounded half up and clipped to 0..255, the vertical pass first where Pillow runs it first (the height
shrinks more than twice as much as the width). The filter weights are normalised by a sequential sum,
as Pillow sums them, so they are bit-identical to Pillow's. In float64 the fixed-point sums are
integers below 2^53, hence exact, and the result equals the PIL path pixel for pixel whatever the
grouping or tiling (tests/test_views.py measures it).

``compute_dtype`` float32 (the default on CUDA, where float64 runs at 1/64 speed on consumer GPUs, and
on any other accelerator, some of which have no float64) uses the same integer coefficients, split in
halves so that every partial sum is an exact float32 integer up to 64 taps (see ``_Arithmetic``). The
box geometry and the filter taps are computed on the host in float64, as Pillow computes them; the device
sees only float32 products and int64 rounding, so nothing on it is float64
(tests/test_accelerator_path.py). tests/test_memory.py measures the largest difference to Pillow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .spec import PreprocessSpec

_SUPPORT = {"bicubic": 2.0, "bilinear": 1.0}
_PRECISION_BITS = 22  # Pillow's 8-bit resampling: 32 - 8 - 2 fractional bits

WORKSPACE_BYTES = 256 * 2**20  # bound on the weight matrices and intermediates of one group of boxes


def default_compute_dtype(device: torch.device | str) -> torch.dtype:
    """float64 (Pillow-exact) on the CPU; float32 elsewhere (fast on GPUs, and MPS has no float64)."""
    return torch.float64 if torch.device(device).type == "cpu" else torch.float32


def _filter(name: str, x: torch.Tensor) -> torch.Tensor:
    x = x.abs()
    if name == "bilinear":
        return (1.0 - x).clamp(min=0.0)
    a = -0.5  # Pillow's bicubic
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return torch.where(x < 1.0, near, torch.where(x < 2.0, far, torch.zeros_like(x)))


class _Axis:
    """Pillow's resampling of N boxes along one axis, with the input run each kept output reads.

    The box ``[start, start+length)`` is resized to ``resized`` pixels, of which outputs
    ``offset .. offset+out_size-1`` are kept. All arguments are [N] float64 tensors on the host, where
    all of this geometry lives; only the coefficients of :meth:`weights` go to the image's device.
    """

    def __init__(self, start: torch.Tensor, length: torch.Tensor, resized: torch.Tensor, offset: torch.Tensor,
                 out_size: int, in_size: int, filter_name: str) -> None:
        self.start, self.out_size, self.in_size, self.filter_name = start, out_size, in_size, filter_name
        self.scale = (length / resized)[:, None]  # [N, 1]
        self.filterscale = self.scale.clamp(min=1.0)
        self.support = _SUPPORT[filter_name] * self.filterscale
        xx = offset[:, None] + torch.arange(out_size, dtype=torch.float64)[None, :]
        self.center = (xx + 0.5) * self.scale  # box-relative, [N, S]
        self.xmin = torch.trunc(self.center - self.support + 0.5).clamp(min=0.0)  # Pillow: (int)(c - support + 0.5)
        self.xmax = torch.minimum(torch.trunc(self.center + self.support + 0.5), length[:, None])
        # Absolute input run [lo, hi) of each output, as the index clamp below sees it (boxes are inside
        # the image in practice; the clamp only keeps a stray box from indexing out of bounds).
        last = in_size - 1
        lo = (self.xmin + start[:, None]).clamp(0, last)
        hi = (torch.maximum(self.xmax, self.xmin + 1) - 1 + start[:, None]).clamp(0, last) + 1
        self.lo, self.hi = lo.long(), hi.long()  # [N, S], monotone in S

    def span(self, sel: torch.Tensor, s0: int = 0, s1: int | None = None) -> tuple[int, int]:
        """The input run read by outputs ``s0 .. s1-1`` of the boxes ``sel`` (host indices)."""
        s1 = self.out_size if s1 is None else s1
        return int(self.lo[sel, s0].min()), int(self.hi[sel, s1 - 1].max())

    def tiles(self, sel: torch.Tensor, budget: int, per_input: int = 0,
              per_output: int = 0) -> list[tuple[int, int, int, int]]:
        """Output tiles ``(s0, s1, lo, hi)`` of the boxes ``sel`` whose work fits ``budget`` bytes: the dense
        weights [n, s1-s0, hi-lo] while built, plus ``per_input`` bytes per box and input pixel and
        ``per_output`` per box and output of the product that uses them. One tile for any ordinary image."""
        n = len(sel)
        lo_u = self.lo[sel].min(dim=0).values.tolist()
        hi_u = self.hi[sel].max(dim=0).values.tolist()

        def cost(s0: int, s1: int) -> int:
            span = hi_u[s1 - 1] - lo_u[s0]
            return n * ((s1 - s0) * span * _BUILD_BYTES + span * per_input + (s1 - s0) * per_output)

        out, s0 = [], 0
        while s0 < self.out_size:
            s1 = self.out_size
            if cost(s0, s1) > budget:
                s1 = s0 + 1  # grow one output at a time: only extreme spans get here
                while s1 < self.out_size and cost(s0, s1 + 1) <= budget:
                    s1 += 1
            out.append((s0, s1, lo_u[s0], hi_u[s1 - 1]))
            s0 = s1
        return out

    def weights(self, sel: torch.Tensor, s0: int, s1: int, lo: int, hi: int, arith: _Arithmetic,
                device: torch.device) -> torch.Tensor:
        """Dense coefficients of outputs ``s0 .. s1-1`` of boxes ``sel`` over input pixels ``lo .. hi-1``,
        [n, s1-s0, hi-lo] on ``device``, as ``arith`` multiplies them (see :meth:`_Arithmetic.coefficients`):
        the host's :meth:`taps` scattered into the band. Each dense entry receives at most one nonzero tap
        (an output's valid taps are distinct pixels; the others weigh 0), so quantising per tap equals
        quantising the dense matrix."""
        index, coeff = self.taps(sel, s0, s1, lo, hi, arith)
        dense = torch.zeros(*coeff.shape[:2], hi - lo, dtype=coeff.dtype, device=device)
        # invalid taps add 0 where they land
        return dense.scatter_add_(2, _to_device(index, device), _to_device(coeff, device))

    def taps(self, sel: torch.Tensor, s0: int, s1: int, lo: int, hi: int,
             arith: _Arithmetic) -> tuple[torch.Tensor, torch.Tensor]:
        """On the host, in float64 as Pillow computes them: each output's K filter taps (K = Pillow's kernel
        size) as input indices relative to ``lo`` and coefficients in ``arith.dtype``, [n, s, K] each
        ([n, 2s, K] when split)."""
        center = self.center[sel, s0:s1]
        xmin, xmax = self.xmin[sel, s0:s1], self.xmax[sel, s0:s1]
        support, filterscale = self.support[sel], self.filterscale[sel]
        taps = int(torch.ceil(support.max()).item()) * 2 + 1
        x = xmin[..., None] + torch.arange(taps, dtype=torch.float64)  # box-relative source pixel
        valid = x < xmax[..., None]
        w = _filter(self.filter_name, (x - center[..., None] + 0.5) * (1.0 / filterscale)[..., None]) * valid
        # Pillow normalises by a running sum in tap order; cumsum accumulates the same way, so the weights
        # do not depend on how many padding taps this group or tile happens to need
        total = w.cumsum(dim=-1)[..., -1:]
        w = torch.where(total != 0, w / total, w)
        index = ((x + self.start[sel, None, None]).clamp(0, self.in_size - 1).long() - lo).clamp_(0, hi - lo - 1)
        coeff = arith.coefficients(w)
        return (torch.cat([index, index], dim=1) if coeff.shape[1] != index.shape[1] else index), coeff


_BUILD_BYTES = 5 * 8  # bytes per dense weight while it is built (a bound: the band, its split halves, the cast)
_SPLIT_BITS = 11
_SPLIT = 2.0**_SPLIT_BITS  # float32: coefficient = high·2^11 + low, so each partial sum is an integer below 2^24


@dataclass(frozen=True)
class _Arithmetic:
    """How the two passes multiply and round.

    ``quantize`` in float64: Pillow's 22-bit integer coefficients; every sum is an integer below 2^53,
    so exact. ``quantize`` in float32 (``split``): each coefficient k is split into high·2^11 + low with
    |low| <= 2^10, and both halves go through the same matrix product (stacked along the outputs).
    Products are integers of at most 20 bits, and since the weights of an output sum to 1 the high
    sums stay below 2^20 and the low sums below 2^24 for up to 64 taps (boxes whose short side is
    under 16× the model's input at bicubic, 32× at bilinear): every partial sum is an exact float32
    integer in any summation order, and the halves are recombined and rounded in int64, elementwise.
    Past 64 taps only the small low sums can round, by far less than a grey level. Without
    ``quantize``: plain floating-point filter weights, no rounding.
    """

    dtype: torch.dtype
    quantize: bool

    @property
    def split(self) -> bool:
        return self.quantize and self.dtype != torch.float64

    def coefficients(self, w: torch.Tensor) -> torch.Tensor:
        """float64 tap weights [n, s, K] -> what the product multiplies by: [n, s, K], or [n, 2s, K] when split."""
        if not self.quantize:
            return w.to(self.dtype)
        fixed = _fixed_point(w)
        if not self.split:
            return fixed
        high = torch.round(fixed / _SPLIT)
        return torch.cat([high, fixed - high * _SPLIT], dim=1).to(self.dtype)

    def finish(self, acc: torch.Tensor, dim: int) -> torch.Tensor:
        """A product's output -> the pass's pixels: Pillow's rounding to 0..255 (in ``dtype``), or as is."""
        if not self.quantize:
            return acc
        if not self.split:
            return _round8(acc)
        # the halves are exact integers in float32, recombined in int64 (which every accelerator has, unlike
        # float64); the floor division is Pillow's arithmetic >> on its int sums
        high, low = acc.chunk(2, dim=dim)
        total = high.long().mul_(1 << _SPLIT_BITS).add_(low.long()).add_(1 << (_PRECISION_BITS - 1))
        return torch.div(total, 1 << _PRECISION_BITS, rounding_mode="floor").clamp_(0, 255).to(self.dtype)

    @property
    def out_factor(self) -> int:
        """Bytes per output of a product, in units of ``dtype``: doubled outputs, then int64 halves."""
        itemsize = torch.empty(0, dtype=self.dtype).element_size()
        return 2 + 2 * 8 // itemsize if self.split else 1


def _axis_plan(box_start: torch.Tensor, box_len: torch.Tensor, other_len: torch.Tensor,
               spec: PreprocessSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Resized length and centre-crop offset along one axis (torchvision Resize + CenterCrop)."""
    size, side = spec.size, float(spec.resize_side)
    if spec.resize_mode == "squash":
        resized = torch.full_like(box_len, side)
    else:
        short = torch.minimum(box_len, other_len)
        # torchvision: new_long = int(side * long / short); the short side becomes exactly `side`
        resized = torch.where(box_len <= other_len, torch.full_like(box_len, side), torch.floor(side * box_len / short))
    offset = torch.round((resized - size) / 2.0)  # CenterCrop: int(round((h - crop) / 2.0))
    return resized, offset


def crop_resize(
    image: torch.Tensor, boxes: torch.Tensor, spec: PreprocessSpec, quantize: bool = True,
    normalize: bool = True, compute_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Cut ``boxes`` [N, 4] (x0, y0, x1, y1; pixels, end-exclusive) out of ``image`` [3, H, W] (uint8 or
    float in 0..255) and preprocess each as the VLM would a PIL crop. -> [N, 3, S, S] float32.

    ``compute_dtype`` is the arithmetic of both passes: by default float64 on the CPU (Pillow-exact) and
    float32 on accelerators (see the module docstring); without ``quantize`` float32 unless given.
    Work is grouped and tiled so that each step stays near ``WORKSPACE_BYTES``, whatever the image's shape.
    """
    _, height, width = image.shape
    dev = image.device
    if compute_dtype is None:
        compute_dtype = default_compute_dtype(dev) if quantize else torch.float32
    if quantize and compute_dtype not in (torch.float32, torch.float64):
        # half precision cannot hold the split coefficients exactly; the model casts the result anyway
        raise ValueError(f"compute_dtype must be float32 or float64 with quantize, got {compute_dtype}")
    b = boxes.to("cpu", torch.float64)  # per-box geometry stays on the host: [N] and [N, S] vectors
    x0, y0, bw, bh = b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    rw, ox = _axis_plan(x0, bw, bh, spec)
    rh, oy = _axis_plan(y0, bh, bw, spec)
    filt = spec.interpolation if spec.interpolation in _SUPPORT else "bicubic"
    ax = _Axis(x0, bw, rw, ox, spec.size, width, filt)
    ay = _Axis(y0, bh, rh, oy, spec.size, height, filt)
    vertical_first = (bh - rh > 0) & (bh - rh > 2 * (bw - rw))
    out = torch.empty(len(boxes), 3, spec.size, spec.size, dtype=torch.float32, device=dev)
    arith = _Arithmetic(compute_dtype, quantize)
    for vertical in (False, True):
        chosen = torch.nonzero(vertical_first == vertical).flatten()
        # the vertical-first pass is the horizontal-first one on the transposed image, with the axes swapped
        src, first, second = (image.transpose(1, 2), ay, ax) if vertical else (image, ax, ay)
        for sel in _groups(chosen, first, second, arith):
            res = _separable(src, first, second, sel, arith)  # [n, 3, S_second, S_first]
            out[sel.to(dev)] = (res.transpose(2, 3) if vertical else res).float()
    out = out / 255.0
    if normalize:
        mean = torch.tensor(spec.mean, device=dev).view(1, 3, 1, 1)
        std = torch.tensor(spec.std, device=dev).view(1, 3, 1, 1)
        out = (out - mean) / std
    return out


def _group_cost(n: int, first_len: int, second_len: int, size: int, itemsize: int) -> int:
    """Bytes of one group's work: both weight matrices while built, and the intermediate [n, 3, L2, S]
    with the copies the two products make of it."""
    return n * size * ((first_len + second_len) * _BUILD_BYTES + 3 * second_len * itemsize * 3)


def _groups(chosen: torch.Tensor, first: _Axis, second: _Axis, arith: _Arithmetic) -> list[torch.Tensor]:
    """Consecutive boxes of ``chosen`` grouped while the group's work (over the union of the input runs
    its boxes read) fits ``WORKSPACE_BYTES``; a box that does not fit alone forms its own group (tiled)."""
    if len(chosen) == 0:
        return []
    itemsize = torch.empty(0, dtype=arith.dtype).element_size() * arith.out_factor
    size = first.out_size
    f_lo, f_hi = first.lo[chosen, 0].tolist(), first.hi[chosen, -1].tolist()
    s_lo, s_hi = second.lo[chosen, 0].tolist(), second.hi[chosen, -1].tolist()
    groups: list[list[int]] = []
    bounds = (0, 0, 0, 0)
    for i, box in enumerate(chosen.tolist()):
        if groups:
            lo1, hi1, lo2, hi2 = (min(bounds[0], f_lo[i]), max(bounds[1], f_hi[i]),
                                  min(bounds[2], s_lo[i]), max(bounds[3], s_hi[i]))
            if _group_cost(len(groups[-1]) + 1, hi1 - lo1, hi2 - lo2, size, itemsize) <= WORKSPACE_BYTES:
                groups[-1].append(box)
                bounds = (lo1, hi1, lo2, hi2)
                continue
        groups.append([box])
        bounds = (f_lo[i], f_hi[i], s_lo[i], s_hi[i])
    return [torch.tensor(g) for g in groups]


def _separable(image: torch.Tensor, first: _Axis, second: _Axis, sel: torch.Tensor,
               arith: _Arithmetic) -> torch.Tensor:
    """Resample boxes ``sel`` of ``image`` [3, A, B]: ``first`` along B, then ``second`` along A.
    -> [n, 3, S_A, S_B] in ``arith.dtype``. Pass 1 reads only the rows pass 2 needs."""
    n, dev, dtype = len(sel), image.device, arith.dtype
    a0, a1 = second.span(sel)
    itemsize = torch.empty(0, dtype=dtype).element_size()
    half = WORKSPACE_BYTES // 2
    tmp = torch.empty(n, 3, a1 - a0, first.out_size, dtype=dtype, device=dev)
    for s0, s1, lo, hi in first.tiles(sel, half):
        w = first.weights(sel, s0, s1, lo, hi, arith, dev)  # [n, s, L] ([n, 2s, L] split)
        # image rows converted at a time: the cast copy and the product's output fit the budget
        per_row = 3 * ((hi - lo) * (itemsize + image.element_size()) + n * (s1 - s0) * itemsize * arith.out_factor)
        rows = max(1, half // per_row)
        for r in range(a0, a1, rows):
            block = image[:, r : min(r + rows, a1), lo:hi].to(dtype)
            acc = torch.einsum("chw,nsw->nchs", block, w)
            tmp[:, :, r - a0 : r - a0 + block.shape[1], s0:s1] = arith.finish(acc, dim=3)
    out = torch.empty(n, 3, second.out_size, first.out_size, dtype=dtype, device=dev)
    # per tile: the product copies its slice of the intermediate, [n, L, 3, S], and writes [n, 3, t, S]
    row_bytes = 3 * first.out_size * itemsize
    for t0, t1, lo, hi in second.tiles(sel, half, per_input=row_bytes, per_output=row_bytes * arith.out_factor):
        w = second.weights(sel, t0, t1, lo, hi, arith, dev)  # [n, t, L] ([n, 2t, L] split)
        acc = torch.einsum("nth,nchs->ncts", w, tmp[:, :, lo - a0 : hi - a0])
        out[:, :, t0:t1] = arith.finish(acc, dim=2)
    return out


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on ``device``; to CUDA through page-locked memory, so that the copy is queued behind the
    device's work instead of waiting for it, and the host goes on to the next taps."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _fixed_point(w: torch.Tensor) -> torch.Tensor:
    """Pillow's 8-bit coefficients: w·2^22 rounded half away from zero (integers, as float64)."""
    return (w * (1 << _PRECISION_BITS)).add_(w.sign().mul_(0.5)).trunc_()


def _round8(acc: torch.Tensor) -> torch.Tensor:
    """Pillow's clip8: (acc + 2^21) >> 22, clipped to 0..255 (in place)."""
    return acc.add_(1 << (_PRECISION_BITS - 1)).mul_(2.0**-_PRECISION_BITS).floor_().clamp_(0, 255)


def full_box(image: torch.Tensor) -> torch.Tensor:
    """The box covering the whole image, [1, 4]."""
    return torch.tensor([[0, 0, image.shape[2], image.shape[1]]])


def preprocess_images(images: Sequence[torch.Tensor], spec: PreprocessSpec,
                      compute_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Whole images [3, H, W] of any sizes, preprocessed as the model would PIL images. -> [B, 3, S, S]."""
    return torch.cat([crop_resize(im, full_box(im), spec, compute_dtype=compute_dtype) for im in images])

"""``absclip visualize``: saliency heat-map, sampled crop centres and raw boxes over an image."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .options import add_method_args, add_model_args, backbone_from_args, method_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("visualize", help="draw the saliency map and ABS crops over an image (PNG)",
                       description="Draw the saliency heat-map, the sampled crop centres and the raw-space "
                                   "boxes over IMAGE, like Fig. 5/7 of the ABS paper.")
    p.add_argument("image", type=Path, help="the image")
    p.add_argument("--output", type=Path, required=True, help="PNG file to write")
    p.add_argument("--max-boxes", type=int, default=20, help="boxes drawn (default: %(default)s)")
    add_model_args(p)
    add_method_args(p, default_method="abs")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from matplotlib.patches import Rectangle

    from ..errors import UnsupportedError
    from ..images import image_to_tensor, load_image
    from ..io import atomic_open
    from ..views import ViewExtractor

    method = method_from_args(args)
    if not method.view_config().uses_saliency:
        raise UnsupportedError(f"method {args.method!r} draws no attention-guided crops; use --method abs")
    image = load_image(args.image)
    tensor = image_to_tensor(image)
    extractor = ViewExtractor.for_method(method, backbone_from_args(args))
    # the same draws as the plan `classify` would use for this image key and seed
    sampled = extractor.sample([tensor], [str(args.image)])
    sal, plan = sampled.saliency, sampled.plans[0]
    assert sal is not None and plan.centres is not None
    boxes, centres = plan.boxes, torch.tensor(plan.centres)
    heat = torch.nn.functional.interpolate(sal.maps[:1, None], size=(image.height, image.width), mode="bilinear")[0, 0]
    x0, y0, x1, y1 = sal.extents[0].tolist()
    fig, axes = plt.subplots(1, 2, figsize=(10, 5 * image.height / max(image.width, 1) + 0.5))
    axes[0].imshow(image)
    axes[0].imshow(heat.numpy(), cmap="jet", alpha=0.5, extent=(x0, x1, y1, y0))
    axes[1].imshow(image)
    for bx0, by0, bx1, by1 in boxes[: args.max_boxes]:
        axes[1].add_patch(Rectangle((bx0, by0), bx1 - bx0, by1 - by0, fill=False, lw=1.2, color="yellow"))
    axes[0].plot(centres[:, 0].numpy(), centres[:, 1].numpy(), "w+", ms=8, mew=1.5)
    axes[1].plot(centres[: args.max_boxes, 0].numpy(), centres[: args.max_boxes, 1].numpy(), "r.", ms=6)
    axes[0].set_title(f"saliency: {extractor.config.saliency} (+: all {len(boxes)} sampled centres)")
    axes[1].set_title(f"{min(args.max_boxes, len(boxes))} of {len(boxes)} crops (sampled centres in red)")
    for ax in axes:
        ax.set_xlim(0, image.width)
        ax.set_ylim(image.height, 0)
        ax.axis("off")
    fig.tight_layout()
    with atomic_open(args.output, "wb") as handle:
        fig.savefig(handle, format="png", dpi=100)
    plt.close(fig)
    print(f"absclip: wrote {args.output}", file=sys.stderr)
    return 0

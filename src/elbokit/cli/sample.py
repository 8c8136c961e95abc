"""``elbokit sample``: decode z ~ p(z) into a PNG grid or a .npy array."""

from __future__ import annotations

import argparse
import io
import math
from pathlib import Path
from typing import Any

from elbokit.cli._args import UsageError, _positive_int, add_checkpoint, add_device


def add_command(commands: Any) -> None:
    p = commands.add_parser("sample", help="decode z ~ p(z) into a PNG grid (or a .npy array)")
    p.add_argument("run", type=Path, help="run directory")
    p.add_argument("--n", type=_positive_int, default=64, help="number of samples (default 64)")
    p.add_argument("--out", type=Path, default=None, help="output .png or .npy (default RUN/samples.png)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--draw", action="store_true", help="draw x ~ p(x|z) instead of showing its mean")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    add_device(p)
    add_checkpoint(p)
    p.set_defaults(run_command=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from elbokit._io import atomic_write
    from elbokit.runs import Run, check_sample_size, image_shape, write_images
    from elbokit.runs.files import vae_only

    vae_only(args.run, "sample")
    r = Run.open(args.run, device=args.device, checkpoint=args.checkpoint)
    own = r.path / "samples.png"  # the run's own picture, which `fit` wrote: replaced freely
    out = args.out if args.out is not None else own
    if out.suffix not in (".png", ".npy"):
        raise UsageError(f"--out must end in .png or .npy, got {out}")
    shape = image_shape(r.path)
    if out.suffix == ".png" and shape is None:
        raise UsageError(f"{r.config.data} is not image data: write samples with --out FILE.npy")
    if not out.parent.is_dir():
        raise UsageError(f"--out: folder {out.parent} does not exist")
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder")
    if out.exists() and not args.overwrite and out.resolve() != own.resolve():
        raise UsageError(f"--out {out} exists; pass --overwrite to replace it")
    check_sample_size(r, args.n, image=out.suffix == ".png")
    x = r.sample(args.n, seed=args.seed, draw=args.draw)
    if out.suffix == ".npy":
        buffer = io.BytesIO()
        np.save(buffer, x.cpu().numpy())
        atomic_write(out, buffer.getvalue())
    elif shape is not None:
        write_images(out, x, shape, columns=max(1, math.isqrt(args.n)))
    print(out)
    return 0

r"""Does a larger β find the factors? A β sweep of the convolutional β-VAE on the dsprites images, each model
scored by MIG, DCI and the FactorVAE score of its test codes, beside its rate, distortion and log p(x).

Each β trains ``elbokit.sweeps.sweep``'s run (what ``elbokit sweep`` trains): Burgess et al. (2018)'s network
(``--arch conv``), d = 10, Bernoulli likelihood, Adam at ``--lr`` (5e-4), batch 64, ``--epochs`` passes over the
60,000 training images, the same seed and initialisation for every β; then log p(x) by importance sampling
(``--k`` draws) and rate and distortion on the first ``--limit`` test points, and the disentanglement metrics on
the codes E_q z of ``--factor-points`` test points (:func:`elbokit.diagnostics.disentanglement`). ``--seeds``
repeats the sweep with other seeds, for the spread across seeds that Locatello et al. (2019) found as large as
the effect of β. Writes the runs under ``--out``; prints a table and, with ``--json``, one JSON object last.

    python benchmarks/dsprites_beta.py --betas 1,2,4,8,16 --epochs 2 --threads 2 --json

References:
    Higgins et al., "β-VAE: learning basic visual concepts with a constrained variational framework", ICLR 2017.
    Burgess et al., "Understanding disentangling in β-VAE", arXiv:1804.03599, 2018.
    Chen et al., "Isolating sources of disentanglement in variational autoencoders", NeurIPS 2018.
    Locatello et al., "Challenging common assumptions in the unsupervised learning of disentangled
    representations", ICML 2019.
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path

import torch

from elbokit.config import RunConfig
from elbokit.sweeps import sweep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--betas", default="1,2,4,8,16", help="comma-separated β values (default 1,2,4,8,16)")
    parser.add_argument("--epochs", type=int, default=2, help="passes over the training set per β (default 2)")
    parser.add_argument("--lr", type=float, default=5e-4, help="Adam learning rate (default 5e-4, Burgess et al.)")
    parser.add_argument("--data", default="dsprites", help="dsprites (default) or dsprites-small")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    parser.add_argument("--k", type=int, default=100, help="importance samples for log p(x) (default 100)")
    parser.add_argument("--limit", type=int, default=200, help="test points for log p(x), rate and distortion")
    parser.add_argument("--factor-points", type=int, default=5000, help="test points scored (default 5000)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/dsprites_beta"), help="run folders")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    betas = [float(b) for b in args.betas.split(",")]
    rows = []
    started = time.perf_counter()
    for seed in (int(s) for s in args.seeds.split(",")):
        config = RunConfig(data=args.data, arch="conv", latent_dim=10, batch_size=64, lr=args.lr,
                           epochs=args.epochs, seed=seed, quiet=True, device="cpu")  # fmt: skip
        points = sweep(config, betas, args.out / f"seed-{seed}", k=args.k, limit=args.limit,
                       factor_points=args.factor_points, overwrite=True)  # fmt: skip
        for p in points:
            row = {"seed": seed, **p._asdict(), "path": str(p.path)}
            history = [json.loads(line) for line in (Path(p.path) / "metrics.jsonl").read_text().splitlines()]
            row["epoch_seconds"] = [h.get("seconds") for h in history]
            rows.append(row)
            print(f"seed {seed} β {p.beta:g}: rate {p.rate:.2f} distortion {p.distortion:.2f} "
                  f"log p(x) {p.log_px:.2f} ± {p.log_px_stderr:.2f} MIG {p.mig:.3f} DCI D {p.dci_disentanglement:.3f} "
                  f"C {p.dci_completeness:.3f} I {p.dci_informativeness:.3f} FactorVAE {p.factor_vae:.3f}",
                  flush=True)  # fmt: skip
    if args.json:
        print(json.dumps({"rows": rows, "epochs": args.epochs, "lr": args.lr, "data": args.data, "k": args.k,
                          "limit": args.limit, "factor_points": args.factor_points, "threads": args.threads,
                          "minutes": (time.perf_counter() - started) / 60, "torch": torch.__version__,
                          "date": datetime.date.today().isoformat()}))  # fmt: skip


if __name__ == "__main__":
    main()

r"""The inference gap split as in Cremer, Li & Duvenaud (2018, Table 2), for a Gaussian and a flow guide.

Two VAEs of the demo's architecture (784-200-200-50, tanh, Bernoulli; binarized MNIST, dynamic binarization)
are trained with the same budget and seed, one with the mean-field Gaussian guide (``--guide gaussian``, the
demo's run) and one with a 4-step inverse autoregressive flow (``--guide flow:4``). On the first ``--limit``
test images, for each model:

- log p̂(x): the gaps' reference, importance sampling with ``--k`` draws from the defensive mixture around the
  best full-covariance Gaussian per image (``elbokit.diagnostics.reference``), with the number of images whose
  Pareto k̂ exceeds 0.7, and, on the first ``--ais-limit`` images, AIS from the same proposal
  (``--ais-steps`` temperatures, 16 chains) beside the IS figure on those images;
- L[q*] in the guide's own family, refined per image (``dx.gaps``), and L[q], the encoder's;
- the approximation gap log p̂(x) − L[q*] and the amortization gap L[q*] − L[q];
- for the Gaussian-trained model also L[q*] in the flow family (a LocalFlow per image started at the
  encoder's q): how much of the Gaussian family's approximation gap a flow recovers on the same model.

It also counts, on the same images, the Pareto k̂ > 0.7 of log p(x) with the encoder's q as proposal against
the refined proposal of ``elbokit evaluate`` (``--proposal encoder`` vs the default ``refined``).

    python benchmarks/gap_table.py --json                   # trains runs/demo and runs/flow4 if missing
    python benchmarks/gap_table.py --limit 100 --ais-limit 20

Cremer et al.'s figures for MNIST with an FFG encoder (their Table 2, quoted in BENCHMARKS.md) are the anchor:
approximation 1.43, amortization 1.34 nats, from a model trained to convergence.

References:
    Cremer, Li & Duvenaud, "Inference suboptimality in variational autoencoders", ICML 2018.
    Kingma, Salimans, Jozefowicz, Chen, Sutskever & Welling, "Improved variational inference with inverse
    autoregressive flow", NeurIPS 2016.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from elbokit import diagnostics as dx
from elbokit.diagnostics.reference import reference_log_px, refined_proposal
from elbokit.estimators import log_marginal
from elbokit.runs import open_run

KHAT = 0.7


def train(run: Path, guide: str, epochs: int) -> None:
    """``elbokit fit`` the demo's model with ``guide`` into ``run``, unless a run is there already."""
    if (run / "checkpoint.safetensors").exists():
        return
    cmd = [sys.executable, "-m", "elbokit.cli", "fit", "--data", "binarized-mnist", "--out", str(run),
           "--epochs", str(epochs), "--guide", guide, "--quiet"]  # fmt: skip
    subprocess.run(cmd, check=True)


def mean(t: torch.Tensor) -> float:
    return float(t.double().mean())


def se_of_mean(stderr: torch.Tensor) -> float:
    return float(stderr.double().square().sum().sqrt()) / stderr.numel()


def measure(run_dir: Path, args: argparse.Namespace, *, flow_family: bool) -> dict[str, Any]:
    run = open_run(run_dir, device="cpu")
    model, guide = run.model, run.model.encoder
    x = run.data.test[: args.limit]
    out: dict[str, Any] = {"run": str(run_dir), "guide": run.config.guide, "n": int(x.shape[0])}
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = dx.gaps(model, guide, x, k=args.k, steps=args.steps, samples=args.samples, warn=False)
    s = g.summary()
    out.update(
        family=s.family, log_px=s.log_px, log_px_stderr=s.log_px_stderr, khat_over=s.unreliable,
        elbo_optimal=s.elbo_optimal, elbo_amortized=s.elbo_amortized, approximation=s.approximation,
        amortization=s.amortization, refine_steps=s.steps, gaps_s=time.perf_counter() - started,
    )  # fmt: skip
    if flow_family:
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            f = dx.gaps(model, guide, x, k=args.k, steps=args.steps, samples=args.samples, family="flow", warn=False)
        out["flow_family"] = {"elbo_optimal": mean(f.elbo_optimal), "approximation": mean(g.log_px - f.elbo_optimal),
                              "seconds": time.perf_counter() - started}  # fmt: skip
    # The reference cross-checked by AIS on the first images, from the same kind of proposal.
    xa = x[: args.ais_limit]
    started = time.perf_counter()
    proposal = refined_proposal(model, guide, xa, steps=args.steps)
    gen = torch.Generator().manual_seed(args.seed)
    a = reference_log_px(model, xa, proposal, method="ais", ais_steps=args.ais_steps, chains=16, generator=gen)
    out["ais"] = {"n": int(xa.shape[0]), "steps": args.ais_steps, "value": mean(a.value),
                  "stderr": se_of_mean(a.stderr), "is_same_points": mean(g.log_px[: args.ais_limit]),
                  "seconds": time.perf_counter() - started}  # fmt: skip
    # evaluate's two proposals on the same images, k = 1000
    with torch.no_grad():
        encoder = log_marginal(model, guide, x, k=1000, warn=False)
    refined = log_marginal(model, lambda _: refined_proposal(model, guide, x, steps=args.steps), x, k=1000, warn=False)
    assert encoder.pareto_k is not None and refined.pareto_k is not None
    out["evaluate"] = {
        "encoder": {"log_px": mean(encoder.value), "khat_over": int((encoder.pareto_k > KHAT).sum())},
        "refined": {"log_px": mean(refined.value), "khat_over": int((refined.pareto_k > KHAT).sum())},
    }
    return out


def table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'nats per image':<34}" + "".join(f"{r['guide'] + ' guide':>22}" for r in rows)]

    def row(name: str, values: list[str]) -> None:
        lines.append(f"{name:<34}" + "".join(f"{v:>22}" for v in values))

    row("log p̂(x), reference IS", [f"{r['log_px']:.3f} ± {r['log_px_stderr']:.3f}" for r in rows])
    row("  images with k̂ > 0.7", [f"{r['khat_over']} of {r['n']}" for r in rows])
    row("  AIS on the first images", [f"{r['ais']['value']:.3f} ± {r['ais']['stderr']:.3f}" for r in rows])
    row("  IS on the same images", [f"{r['ais']['is_same_points']:.3f}" for r in rows])
    row("L[q*], own family", [f"{r['elbo_optimal']:.3f} ({r['family']})" for r in rows])
    row("L[q], the encoder's", [f"{r['elbo_amortized']:.3f}" for r in rows])
    row("approximation gap", [f"{r['approximation']:.3f}" for r in rows])
    row("amortization gap", [f"{r['amortization']:.3f}" for r in rows])
    row("L[q*], flow family", [f"{r['flow_family']['elbo_optimal']:.3f}" if "flow_family" in r else "" for r in rows])
    row("  approximation gap, flow family",
        [f"{r['flow_family']['approximation']:.3f}" if "flow_family" in r else "" for r in rows])  # fmt: skip
    row("k̂ > 0.7, encoder as proposal", [f"{r['evaluate']['encoder']['khat_over']} of {r['n']}" for r in rows])
    row("k̂ > 0.7, refined proposal", [f"{r['evaluate']['refined']['khat_over']} of {r['n']}" for r in rows])
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gaussian-run", type=Path, default=Path("runs/demo"))
    parser.add_argument("--flow-run", type=Path, default=Path("runs/flow4"))
    parser.add_argument("--epochs", type=int, default=10, help="training budget of both runs when trained here")
    parser.add_argument("--limit", type=int, default=200, help="the first N test images")
    parser.add_argument("--k", type=int, default=5000, help="importance samples of the reference")
    parser.add_argument("--steps", type=int, default=300, help="refinement steps")
    parser.add_argument("--samples", type=int, default=1000, help="draws behind each final ELBO")
    parser.add_argument("--ais-limit", type=int, default=50)
    parser.add_argument("--ais-steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train(args.gaussian_run, "gaussian", args.epochs)
    train(args.flow_run, "flow:4", args.epochs)
    rows = [measure(args.gaussian_run, args, flow_family=True), measure(args.flow_run, args, flow_family=False)]
    print(table(rows))
    if args.json:
        print(json.dumps({"rows": rows, "threads": args.threads, "k": args.k, "steps": args.steps,
                          "torch": torch.__version__, "date": datetime.date.today().isoformat()}))  # fmt: skip


if __name__ == "__main__":
    main()

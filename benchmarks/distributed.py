"""One process against several on this machine: training and ``evaluate --k 5000`` throughput, and whether the
answers agree.

Each configuration runs the real command (``elbokit fit`` / ``elbokit evaluate``) as a subprocess with a stated
number of threads per process, so that 1 process x 2 threads and 2 processes x 1 thread use the same cores.
Training: binarized MNIST (the first ``--limit`` digits, 784-200-200-50, batch 100) for ``--epochs`` epochs; the
figure is the last epoch's training points per second from ``metrics.jsonl`` (the steps alone), and the final
validation bounds of the world sizes are compared (they must agree to float tolerance). Evaluation: log p(x) with
k = 5000 on ``--points`` test digits, q(z|x) as the proposal; points per second of the whole command (start-up
included, the same for both).

    .venv/bin/python benchmarks/distributed.py --json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _run(args: list[str], threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "elbokit.cli", *args], check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=10_000, help="training digits")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--points", type=int, default=200, help="test digits for evaluate --k 5000")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    layouts = [(1, 2), (2, 1)]  # (processes, threads per process): the same two cores
    out: dict[str, Any] = {"benchmark": "distributed", "cores": cores, "limit": args.limit, "epochs": args.epochs,
                           "points": args.points, "train": [], "evaluate": []}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for nproc, threads in layouts:
            run = Path(tmp) / f"run{nproc}"
            seconds = _run(["fit", "--data", "binarized-mnist", "--limit", str(args.limit), "--epochs",
                            str(args.epochs), "--out", str(run), "--quiet", "--device", "cpu",
                            "--nproc", str(nproc)], threads)  # fmt: skip
            rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            out["train"].append({
                "processes": nproc, "threads_per_process": threads, "command_seconds": seconds,
                "points_per_second_last_epoch": rows[-1]["examples_per_second"],
                "validation_bound": rows[-1]["validation_bound"],
            })  # fmt: skip
        for nproc, threads in layouts:
            seconds = _run(["evaluate", str(Path(tmp) / "run1"), "--k", "5000", "--limit", str(args.points),
                            "--proposal", "encoder", "--device", "cpu", "--nproc", str(nproc)], threads)  # fmt: skip
            log = json.loads((Path(tmp) / "run1" / "evaluation.json").read_text())
            out["evaluate"].append({"processes": nproc, "threads_per_process": threads, "command_seconds": seconds,
                                    "points_per_second": args.points / seconds, "log_px": log["log_px"]})  # fmt: skip
    one, two = out["train"]
    out["train_speedup_2x1_over_1x2"] = two["points_per_second_last_epoch"] / one["points_per_second_last_epoch"]
    out["validation_bound_difference"] = two["validation_bound"] - one["validation_bound"]
    e1, e2 = out["evaluate"]
    out["evaluate_speedup_2x1_over_1x2"] = e2["points_per_second"] / e1["points_per_second"]
    out["evaluate_log_px_identical"] = e1["log_px"] == e2["log_px"]
    if args.json:
        print(json.dumps(out))
    else:
        print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

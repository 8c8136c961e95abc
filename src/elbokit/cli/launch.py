"""``--nproc N``: a command started on N local processes, ranks 0..N-1 of one torch.distributed group
(:mod:`elbokit.distributed`), and what it says when a rank fails."""

from __future__ import annotations

import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

#: Seconds the launcher waits for the other ranks to exit on their own after one failed, before stopping them.
GRACE = 5.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, argv: list[str], nproc: int, port: int, logs: str) -> None:
    """One rank of :func:`launch`: the command's own ``main`` under the group's environment, its stderr kept in
    ``logs`` for the launcher (which prints one line, from one rank)."""
    os.environ.update({
        "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc),
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
    })  # fmt: skip
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // nproc))
    if rank != 0:
        sys.stdout = open(os.devnull, "w")
    sys.stderr = open(Path(logs) / f"rank{rank}.err", "w", buffering=1)
    os.dup2(sys.stderr.fileno(), 2)  # and what C++ (gloo) and helper processes write to the descriptor
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # until the command installs its own: the launcher forwards it
    from elbokit.cli import leave, main

    code = main(argv)
    sys.stderr.flush()
    if code != 0:  # when: the launcher names the rank that failed first, not the peers that lost it after
        (Path(logs) / f"rank{rank}.failed").write_text(str(time.monotonic_ns()))
    leave(code)


def launch(argv: Sequence[str], nproc: int) -> int:
    """Run the command ``argv`` in ``nproc`` local processes (ranks 0..nproc-1 of one group) and return its exit
    status: 0 when every rank finished, else the status of the rank that failed (rank 0's where it failed too),
    with one line on stderr naming the rank and its error. A SIGINT or SIGTERM to this process is passed to every
    rank, which then stop together (a run checkpoints once)."""
    from torch.multiprocessing.spawn import start_processes

    with tempfile.TemporaryDirectory(prefix="elbokit-ranks-") as logs:
        port = _free_port()
        context = start_processes(_worker, args=(list(argv), nproc, port, logs), nprocs=nproc, join=False,
                                     start_method="spawn")  # fmt: skip
        processes = context.processes

        def forward(signum: int, frame: object) -> None:
            for p in processes:
                if p.pid is not None and p.exitcode is None:
                    os.kill(p.pid, signum)

        previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
        seen: dict[int, int] = {}  # rank -> when the launcher saw it exit non-zero (monotonic ns)
        try:
            failed_at: float | None = None
            while any(p.exitcode is None for p in processes):
                for r, p in enumerate(processes):
                    if p.exitcode not in (None, 0) and r not in seen:
                        seen[r] = time.monotonic_ns()
                if failed_at is None and seen:
                    failed_at = time.monotonic()
                if failed_at is not None and time.monotonic() - failed_at > GRACE:
                    for p in processes:  # blocked in a collective with the rank that failed: stop them
                        if p.exitcode is None:
                            p.terminate()
                    break
                time.sleep(0.05)
            for p in processes:
                p.join(timeout=10)
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)
        codes = [p.exitcode if p.exitcode is not None else -9 for p in processes]
        errors = [(Path(logs) / f"rank{r}.err").read_text(errors="replace") for r in range(nproc)]
        when = {}
        for r, code in enumerate(codes):
            if code != 0:
                marker = Path(logs) / f"rank{r}.failed"
                reported = int(marker.read_text()) if marker.exists() else None
                when[r] = min(t for t in (reported, seen.get(r)) if t is not None) if r in seen or reported else 0
    if all(code == 0 for code in codes):
        sys.stderr.write(errors[0])
        return 0
    last = [next((line for line in reversed(e.splitlines()) if line.startswith("elbokit:")), "") for e in errors]
    if all(code == codes[0] for code in codes) and all(line == last[0] for line in last):
        rank = 0  # every rank failed alike (bad input, an interrupt): rank 0 says it
    else:  # a rank killed by a signal (its peers then lose it), else the rank that failed first
        killed = [r for r, code in enumerate(codes) if code < 0 and code != -signal.SIGTERM]
        rank = killed[0] if killed else min((r for r in when if codes[r] != -signal.SIGTERM),
                                            key=lambda r: (when[r], r), default=0)  # fmt: skip
    code = codes[rank]
    if rank == 0:
        sys.stderr.write(errors[0])
        return code if code > 0 else 1
    lines = [line for line in errors[rank].splitlines() if line.startswith("elbokit:")]
    if lines:
        cause = lines[-1].removeprefix("elbokit: ").removeprefix("error: ")
    elif code < 0:  # with the last thing it said (a C++ abort's message), where it said anything
        said = [line.strip() for line in errors[rank].splitlines() if line.strip()]
        cause = f"killed by signal {signal.Signals(-code).name}" + (f" ({said[-1][:200]})" if said else "")
    else:
        cause = f"exited with status {code}"
    print(f"elbokit: error: rank {rank} of {nproc} failed: {cause}", file=sys.stderr)
    return code if code > 0 else 1

"""Run ``elbokit`` with a fault injected: the process kills itself (SIGKILL, no clean-up) at a named moment.

    python kill_driver.py EVENT -- ARGV...

EVENT is one of
    step:N            before the N-th training step (1-based)
    replace:NAME:N    during the N-th atomic write of NAME: its temporary file is written and fsynced, not yet renamed
    written:NAME:N    just after the N-th atomic write of NAME (renamed into place)
    append:N          in the middle of the N-th line appended to metrics.jsonl (a torn line)
    slow:SECONDS      no kill: sleep SECONDS before each training step
    gate:N:PATH       no kill: before the N-th step, wait until the file PATH exists (holds the run open, lock
                      held, for as long as a concurrency test needs)
    none              no fault
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _install(event: str) -> None:
    kind, _, rest = event.partition(":")
    if kind == "none":
        return
    if kind in ("step", "slow", "gate"):
        from elbokit.train import step as step_module

        original = step_module.TrainStep.__call__
        count = [0]

        def call(self: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
            count[0] += 1
            if kind == "step" and count[0] == int(rest):
                _die()
            if kind == "slow":
                time.sleep(float(rest))
            if kind == "gate":
                nth, _, path = rest.partition(":")
                while count[0] == int(nth) and not Path(path).exists():
                    time.sleep(0.02)
            return original(self, x, *args, **kwargs)

        step_module.TrainStep.__call__ = call  # type: ignore[method-assign]
        return
    if kind in ("replace", "written"):
        name, _, nth = rest.rpartition(":")
        real_replace = os.replace
        seen = [0]

        def replace(src: Any, dst: Any, **kwargs: Any) -> None:
            if Path(dst).name == name:
                seen[0] += 1
                if kind == "replace" and seen[0] == int(nth):
                    _die()
                real_replace(src, dst, **kwargs)
                if kind == "written" and seen[0] == int(nth):
                    _die()
                return
            real_replace(src, dst, **kwargs)

        os.replace = replace  # type: ignore[assignment]
        return
    if kind == "append":
        from elbokit.train import loop

        original_append = loop.append_metrics
        appended = [0]

        def append(path: Path, record: dict[str, Any]) -> None:
            appended[0] += 1
            if appended[0] == int(rest):
                import json

                line = json.dumps(record) + "\n"
                with path.open("a", encoding="utf-8") as f:
                    f.write(line[: len(line) // 2])
                    f.flush()
                    os.fsync(f.fileno())
                _die()
            original_append(path, record)

        loop.append_metrics = append
        return
    raise SystemExit(f"unknown event {event!r}")


if __name__ == "__main__":
    separator = sys.argv.index("--")
    _install(sys.argv[1])
    from elbokit.cli import main

    sys.exit(main(sys.argv[separator + 1 :]))

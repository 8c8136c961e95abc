"""The ``elbokit`` command line: one module per command, each parsing its flags, calling the library and
printing; nothing else (the work is in :class:`elbokit.runs.Run`, :mod:`elbokit.diagnostics` and
:mod:`elbokit.train`, imported only when a command runs).

Exit status: 0 done, 2 bad input or usage (a one-line message, no traceback), 1 internal error.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from elbokit.cli import data, diagnose, evaluate, fit, linear_gaussian, report, sample, sweep
from elbokit.cli._args import UsageError, _Parser

COMMANDS = (linear_gaussian, fit, evaluate, sample, diagnose, sweep, report, data)


def build_parser() -> _Parser:
    from elbokit import __version__

    parser = _Parser(prog="elbokit", description="Latent-variable models by the ELBO, and the truth about the bound.")
    parser.add_argument("--version", action="version", version=f"elbokit {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for command in COMMANDS:
        command.add_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from elbokit import distributed
    from elbokit.errors import TrainingDiverged

    try:
        args = build_parser().parse_args(argv)
        nproc = getattr(args, "nproc", 1)
        if distributed.env_world() is None and nproc > 1:  # start the ranks; each runs this command
            from elbokit.cli.launch import launch

            return launch(list(sys.argv[1:] if argv is None else argv), nproc)
        if distributed.init_from_env(getattr(args, "device", "auto")).rank != 0:
            sys.stdout = open(os.devnull, "w")
        try:
            return int(args.run_command(args))
        finally:
            distributed.shutdown()
    except TrainingDiverged as err:
        print(f"elbokit: training stopped: {err}", file=sys.stderr)
        return 1
    except (UsageError, ValueError, OSError) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"elbokit: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("elbokit: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a bug, not bad input: say so in one line, keep status 1
        print(f"elbokit: internal error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1


__all__ = ["build_parser", "main"]


def leave(code: int) -> NoReturn:
    """Exit with ``code``. A rank of a process group (whose group :func:`main` has already left) exits at once
    after flushing its output: interpreter shutdown would tear down torch.distributed's remaining threads and
    sockets in no fixed order, which can abort a process (SIGABRT) after its work is done."""
    from elbokit.distributed import env_world

    if env_world() is not None:
        import atexit

        try:  # Python's own exit handlers (multiprocessing's semaphores, logging), not the C++ teardown
            atexit._run_exitfuncs()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    sys.exit(code)


def entry() -> NoReturn:
    """The ``elbokit`` command (and ``python -m elbokit.cli``)."""
    leave(main())

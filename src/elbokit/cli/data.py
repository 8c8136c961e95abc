"""``elbokit data``: list the datasets, or download one into the cache."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from elbokit.cli._args import _Parser


def add_command(commands: Any) -> None:
    p = commands.add_parser("data", help="list datasets or download one")
    sub = p.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    sub.add_parser("list", help="registered dataset names")
    dl = sub.add_parser("download", help="fetch a dataset's files into the cache (md5-checked)")
    dl.add_argument("name", help="dataset (mnist)")
    dl.add_argument("--cache-dir", type=Path, default=None,
                    help="cache folder (default: $ELBOKIT_DATA, else ~/.cache/elbokit)")  # fmt: skip
    dl.add_argument("--url", default=None, help="mirror to fetch from")
    p.set_defaults(run_command=run)


def run(args: argparse.Namespace) -> int:
    from elbokit.data import available, download

    if args.data_command == "list":
        print("\n".join(available()))
        return 0
    kwargs: dict[str, Any] = {"cache_dir": args.cache_dir}
    if args.url is not None:
        kwargs["base_url"] = args.url
    print(download(args.name, **kwargs))
    return 0

"""The `mergesearch` command: one program, one module per subcommand in search/commands/."""

from __future__ import annotations

import argparse
import importlib
import sys

# Order is the order `--help` lists them in.
COMMANDS = (
    "merge",
    "inspect",
    "repair",
    "lora",
    "prompts",
    "benchmark",
    "search",
    "status",
    "report",
    "dashboard",
    "export",
    "analyze",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mergesearch",
        description="Merge Stable Diffusion checkpoints, and search for merges that beat their parents.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"search.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"search.commands.{name}":
                raise
            continue  # subcommand not built yet
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

"""The `mergesearch` command: one program, one module per subcommand in search/commands/."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

# Order is the order `--help` lists them in.
COMMANDS = (
    "merge",
    "methods",
    "inspect",
    "repair",
    "lora",
    "convert",
    "prompts",
    "benchmark",
    "search",
    "status",
    "report",
    "dashboard",
    "export",
    "analyze",
    "grid",
    "history",
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


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings about the user's inputs (merge_core.errors.CheckpointWarning) as one plain line each."""
    from merge_core.errors import CheckpointWarning

    if issubclass(category, CheckpointWarning):
        print(f"mergesearch: warning: {message}", file=sys.stderr)
    else:
        print(warnings.formatwarning(message, category, filename, lineno, line), end="", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    previous = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        parser = build_parser()
        args = parser.parse_args(argv)  # --help prints here: inside the pipe guard too
        if not getattr(args, "handler", None):
            parser.print_help()
            return 2
        code = int(args.handler(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except KeyboardInterrupt:  # Ctrl-C before a command installs its own handling (loading torch, ...)
        print("\naborted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`mergesearch inspect f --json | head`): stop quietly, as Unix tools do.
        # Point stdout at /dev/null so the interpreter's final flush does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a tool killed by a closed pipe
    finally:
        warnings.showwarning = previous


if __name__ == "__main__":
    sys.exit(main())

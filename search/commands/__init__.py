"""Subcommands of `mergesearch`; each module has add_parser(subparsers) and sets `handler=run` via set_defaults."""

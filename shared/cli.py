"""The ``fedaug`` command: one sub-command per job, each defined in the package it belongs to.

Sub-commands are found through the ``fedaug.commands`` entry points (``pyproject.toml``):
each names a ``register(subparsers)`` function that adds its parser and sets ``func``. So
this module, in the common package, imports nothing of the layers above it, and the heavy
work is imported only when a command runs (``fedaug --help`` is instant).
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import entry_points

from fedaug.errors import run_command
from fedaug.logs import setup_logging

__all__ = ["main", "build_parser"]

#: Order of the sub-commands in ``fedaug --help`` (others follow, sorted).
_ORDER = ("simulate", "generate", "evaluate", "audit", "augment", "privacy", "server", "client")


def build_parser() -> argparse.ArgumentParser:
    """The ``fedaug`` parser with every registered sub-command."""
    p = argparse.ArgumentParser(
        prog="fedaug",
        description="Federated, privacy-preserving data augmentation: sites train a "
        "class-conditional diffusion generator with DP-SGD under Flower and share only "
        "differentially private releases (generator parameters, policies, noisy counts).",
    )
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="more detail (debug lines; -vv also the libraries' own INFO lines)")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    found = {ep.name: ep for ep in entry_points(group="fedaug.commands")}
    for name in sorted(found, key=lambda n: (_ORDER.index(n) if n in _ORDER else 99, n)):
        found[name].load()(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fedaug`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and not getattr(args, "passthrough", False):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    setup_logging(-1 if args.quiet else args.verbose)
    try:
        if getattr(args, "passthrough", False):
            return run_command(lambda: args.func(rest), prog=f"fedaug {args.command}")
        return run_command(lambda: args.func(args), prog="fedaug")
    except BrokenPipeError:  # `fedaug ... | head`: the reader left; not an error of ours
        sys.stderr.close()
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

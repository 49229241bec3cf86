"""Logging for every fedaug process: one handler, one line per event, quiet libraries."""

from __future__ import annotations

import logging
import sys

__all__ = ["setup_logging", "ensure_logging"]

_FORMAT = "%(asctime)s %(name)s: %(message)s"
#: Libraries that log every message or call at INFO; fedaug keeps their warnings only.
_LIBRARIES = ("flwr", "diffusers", "opacus")


def setup_logging(verbosity: int = 0, *, stream=None) -> None:
    """Route fedaug's loggers to one handler on ``stream`` (stderr by default).

    ``verbosity`` -1 shows warnings only (``--quiet``), 0 one line per event (INFO), 1 and
    more debug lines and the libraries' own INFO lines (``-v``). fedaug's loggers do not
    propagate to the root logger, so a library that calls ``logging.basicConfig`` (Opacus
    does) cannot print every line a second time.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT, "%H:%M:%S"))
    ours = logging.getLogger("fedaug")
    ours.handlers[:] = [handler]
    ours.propagate = False
    ours.setLevel({-1: logging.WARNING, 0: logging.INFO}.get(min(verbosity, 1), logging.DEBUG))
    if verbosity < 1:
        import flwr  # noqa: F401  (flwr sets its logger's level on import: override after)

        for name in _LIBRARIES:
            logging.getLogger(name).setLevel(logging.WARNING)


def ensure_logging() -> None:
    """One line per event in a process fedaug did not start (a deployed ServerApp or
    ClientApp run by Flower): set up fedaug's handler unless a command already did."""
    if not logging.getLogger("fedaug").handlers:
        setup_logging(0)

"""Errors raised by fedaug: each says what was wrong, the value, and how to fix it."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

__all__ = [
    "run_command",
    "FedaugError",
    "ConfigError",
    "DataError",
    "PolicyError",
    "LedgerError",
    "BudgetExhaustedError",
]


class FedaugError(Exception):
    """Base class of every error fedaug raises on purpose.

    Parameters
    ----------
    what : str
        What was wrong, in one sentence.
    value : Any, optional
        The offending value, shown with ``repr``.
    fix : str, optional
        How to fix it.
    """

    def __init__(self, what: str, *, value: Any = ..., fix: str | None = None) -> None:
        self.what = what
        self.value = value
        self.fix = fix
        parts = [what]
        if value is not ...:
            parts.append(f"Got: {value!r}.")
        if fix:
            parts.append(f"Fix: {fix}")
        super().__init__(" ".join(parts))


class ConfigError(FedaugError, ValueError):
    """A run, node or command-line setting is invalid."""


class DataError(FedaugError, ValueError):
    """A data source is missing, unreadable or malformed."""


class PolicyError(FedaugError, ValueError):
    """An augmentation policy is malformed; lists every problem with its path."""

    def __init__(self, problems: list[str], *, fix: str | None = None) -> None:
        self.problems = list(problems)
        what = f"Invalid augmentation policy ({len(problems)} problem(s)): " + "; ".join(
            problems
        )
        super().__init__(
            what,
            fix=fix
            or 'See README "Augmentation policies" for the schema (schema_version 1).',
        )


class LedgerError(FedaugError, RuntimeError):
    """A site's privacy ledger is corrupted, truncated or inconsistent."""


class BudgetExhaustedError(FedaugError, RuntimeError):
    """A site's privacy budget does not allow any further training."""


def run_command(action: Callable[[], int | None], *, prog: str) -> int:
    """Run a command-line action; a :class:`FedaugError` becomes one line on stderr
    (``PROG: error: ...``, what was wrong, the value, the fix) and exit status 2."""
    try:
        return int(action() or 0)
    except FedaugError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2

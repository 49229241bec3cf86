"""``fedaug privacy show``: what a site has spent, from its ledger."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``privacy`` to the ``fedaug`` command."""
    pr = sub.add_parser("privacy", help="inspect a site's privacy ledger")
    prs = pr.add_subparsers(dest="privacy_command", required=True)
    show = prs.add_parser("show", help="the ledger as a table (or JSON)",
                          description="Show every spending recorded in a site's ledger and "
                          "the epsilon composed over all of it.")
    show.add_argument("--state-dir", required=True, help="the site's state folder")
    show.add_argument("--json", action="store_true", help="one JSON object")
    show.set_defaults(func=_cmd_show)


def _cmd_show(args: argparse.Namespace) -> int:
    from fedaug.privacy.ledger import open_ledger_readonly

    ledger = open_ledger_readonly(args.state_dir)
    budget = _read_budget(Path(args.state_dir))
    summary = ledger.summary(budget=budget)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"site {summary['site']}  accountant {summary['mechanism']}  delta "
          f"{summary['delta']:g}  epsilon {summary['epsilon']:.4f}"
          + (f" of budget {budget:g}" if budget else ""))
    print(f"{'run':<32} {'round':>5} {'mechanism':>11} {'steps':>6} {'sigma':>8} {'q':>8} "
          f"{'cum. eps':>9}")
    for e in summary["entries"]:
        print(f"{e['run']:<32} {e['round']:>5} {e['mechanism']:>11} {e['steps']:>6} "
              f"{e['noise-multiplier']:>8.3f} {e['sample-rate']:>8.4f} {e['epsilon']:>9.4f}")
    return 0


def _read_budget(state_dir: Path) -> float | None:
    plan = state_dir / "privacy-plan.json"
    try:
        return float(json.loads(plan.read_text(encoding="utf-8"))["budget"])
    except (OSError, ValueError, KeyError):
        return None

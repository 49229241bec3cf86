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

    _check_holds_a_ledger(Path(args.state_dir))
    ledger = open_ledger_readonly(args.state_dir)
    budget = _read_budget(Path(args.state_dir))
    summary = ledger.summary(budget=budget)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"site {summary['site']}  accountant {summary['mechanism']}  delta "
          f"{summary['delta']:g}  epsilon {summary['epsilon']:.4f}"
          + (f" of budget {budget:g} (its last plan's; the node config decides)"
             if budget else ""))
    print(f"{'run':<32} {'round':>5} {'release':>14} {'steps':>6} {'sigma':>8} {'q':>8} "
          f"{'cum. eps':>9}")
    for e in summary["entries"]:
        kind = e.get("release") or e["mechanism"]
        print(f"{e['run']:<32} {e['round']:>5} {kind:>14} {e['steps']:>6} "
              f"{e['noise-multiplier']:>8.3f} {e['sample-rate']:>8.4f} {e['epsilon']:>9.4f}")
    return 0


#: How deep below --state-dir ``privacy show`` looks for site folders (OUT -> OUT/sites/<site>).
_SEARCH_DEPTH = 3
_LISTED = 8


def _check_holds_a_ledger(state_dir: Path) -> None:
    """Refuse, with the folders to pass instead, a folder that is no site's state folder.

    A folder with the ledger, or with only its head file (a ledger that was removed: the
    ledger module refuses it as tampered with), goes on to the ledger module.
    """
    from fedaug.errors import ConfigError
    from fedaug.privacy.ledger import HEAD_FILE, LEDGER_FILE

    if (state_dir / LEDGER_FILE).exists() or (state_dir / HEAD_FILE).exists():
        return
    if not state_dir.is_dir():
        raise ConfigError(f"--state-dir {state_dir} is not a folder.",
                          fix="Pass a site's state folder (its node config state-dir; "
                          "OUT/sites/<site> after `fedaug simulate`).")
    sites = _folders_with_ledgers(state_dir)
    if not sites:
        raise ConfigError(
            f"{state_dir} holds no privacy ledger ({LEDGER_FILE}), and no folder below it "
            f"does (searched {_SEARCH_DEPTH} levels down).",
            fix="Pass a site's state folder: its node config state-dir, or OUT/sites/<site> "
            "after `fedaug simulate --out OUT`.")
    shown = ", ".join(str(p) for p in sites[:_LISTED])
    more = f" (and {len(sites) - _LISTED} more)" if len(sites) > _LISTED else ""
    raise ConfigError(f"{state_dir} holds no privacy ledger ({LEDGER_FILE}); "
                      f"{len(sites)} folder(s) below it do.",
                      fix=f"Pass one of: {shown}{more}.")


def _folders_with_ledgers(state_dir: Path) -> list[Path]:
    """Folders up to :data:`_SEARCH_DEPTH` levels below ``state_dir`` that hold a ledger (or
    its head file), as paths under ``state_dir`` as given."""
    from fedaug.privacy.ledger import HEAD_FILE, LEDGER_FILE

    found: set[Path] = set()
    for depth in range(1, _SEARCH_DEPTH + 1):
        pattern = "/".join(["*"] * depth)
        for name in (LEDGER_FILE, HEAD_FILE):
            found |= {p.parent for p in state_dir.glob(f"{pattern}/{name}")}
    return sorted(found, key=lambda p: (len(p.parts), str(p)))


def _read_budget(state_dir: Path) -> float | None:
    plan = state_dir / "privacy-plan.json"
    try:
        return float(json.loads(plan.read_text(encoding="utf-8"))["budget"])
    except (OSError, ValueError, KeyError):
        return None

"""``fedaug augment``: apply a policy to an image folder or a text table."""

from __future__ import annotations

import argparse
from pathlib import Path

from fedaug.errors import ConfigError

__all__ = ["register"]


def _column(value: str) -> int | str:
    """A table column: a 0-based index when all digits, else a header name."""
    text = value.strip()
    if not text:
        raise argparse.ArgumentTypeError("a column is a header name or a 0-based index")
    return int(text) if text.isdigit() else text


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``augment`` to the ``fedaug`` command."""
    ag = sub.add_parser(
        "augment", help="apply a policy to an image folder or a CSV/TSV of texts",
        description="Write --copies augmented versions of every input. Images keep their class "
        "sub-folders; a preview grid PNG (original, then copies) is written and the golden rule "
        "is checked: intensity distributions of augmented vs original images, per class. A "
        "text table keeps its header and every column; only the text column changes. "
        "Unreadable images, empty class folders and rows without a label are skipped with a "
        "warning each.")
    ag.add_argument("--policy", required=True, help="policy JSON file")
    ag.add_argument("--in", dest="input", required=True,
                    help="image folder (IN/<class>/*.png|jpg) or a CSV/TSV text table")
    ag.add_argument("--out", required=True, help="output folder (or file for texts)")
    ag.add_argument("--copies", type=int, default=1, help="augmented copies per input (1)")
    ag.add_argument("--seed", type=int, default=0)
    ag.add_argument("--text-column", type=_column, metavar="NAME|INDEX",
                    help="the table's text column: header name or 0-based index "
                    "(default: a column named text/message/review/..., or column 1 of two)")
    ag.add_argument("--label-column", type=_column, metavar="NAME|INDEX",
                    help="the table's label column: header name or 0-based index "
                    "(default: a column named label/class/..., or column 0 of two)")
    ag.set_defaults(func=_cmd_augment)


def _cmd_augment(args: argparse.Namespace) -> int:
    from fedaug.augment import Policy
    from fedaug.augment.runner import augment_path

    path = Path(args.policy)
    if not path.is_file():
        raise ConfigError("Policy file not found.", value=args.policy,
                          fix="Pass a JSON policy (README, Augmentation policies).")
    policy = Policy.from_json(path.read_text(encoding="utf-8"))
    summary = augment_path(policy, args.input, args.out, copies=args.copies, seed=args.seed,
                           text_column=args.text_column, label_column=args.label_column)
    print(f"wrote {summary['written']} augmented {summary['kind']} from {summary['inputs']} "
          f"inputs to {summary['out']}")
    if summary.get("skipped"):
        print(f"skipped {len(summary['skipped'])} unreadable input(s) (warnings above name "
              "each)")
    if "shift-text" in summary:
        print(summary["shift-text"])
    if "preview" in summary:
        print(f"preview grid: {summary['preview']}")
    return 0

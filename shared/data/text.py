"""Text classification data sets read from CSV/TSV tables (e.g. the SMS Spam Collection)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedaug.errors import DataError

__all__ = ["LABEL_COLUMN_NAMES", "TEXT_COLUMN_NAMES", "TextDataset", "load_text_table"]

#: Header names recognised (case-insensitively) when no column is given.
TEXT_COLUMN_NAMES = ("text", "message", "sms", "sentence", "review", "content", "body")
LABEL_COLUMN_NAMES = ("label", "labels", "class", "category", "target", "y")


@dataclass(frozen=True, eq=False)
class TextDataset:
    """A labelled set of texts.

    Parameters
    ----------
    texts : tuple of str
        One non-empty text per example.
    labels : np.ndarray
        ``int64`` array of shape ``(N,)`` with values in ``[0, len(class_names))``.
    class_names : tuple of str
        Name of each class; ``labels`` index into it.
    name : str
        Short name of the source (for logs).
    """

    texts: tuple[str, ...]
    labels: np.ndarray
    class_names: tuple[str, ...]
    name: str

    def __post_init__(self) -> None:
        texts = tuple(self.texts)
        if not all(isinstance(t, str) for t in texts):
            raise DataError(
                "TextDataset.texts must all be str.", value=type(self.texts).__name__
            )
        object.__setattr__(self, "texts", texts)
        labels = self.labels
        if (
            not isinstance(labels, np.ndarray)
            or labels.dtype != np.int64
            or labels.ndim != 1
        ):
            raise DataError(
                "TextDataset.labels must be a 1-D int64 numpy array.",
                value=getattr(labels, "dtype", type(labels).__name__),
                fix="Use np.asarray(labels, dtype=np.int64).",
            )
        if len(labels) != len(texts):
            raise DataError(
                "TextDataset has a different number of texts and labels.",
                value=(len(texts), len(labels)),
            )
        names = tuple(self.class_names)
        if not names or not all(isinstance(n, str) for n in names):
            raise DataError(
                "TextDataset.class_names must be a non-empty sequence of str.",
                value=self.class_names,
            )
        object.__setattr__(self, "class_names", names)
        if len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
            raise DataError(
                f"TextDataset labels must lie in [0, {len(names)}).",
                value=(int(labels.min()), int(labels.max())),
            )

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def num_classes(self) -> int:
        """Number of classes (``len(class_names)``)."""
        return len(self.class_names)

    def subset(self, indices: Sequence[int] | np.ndarray) -> TextDataset:
        """Return a new data set with the examples at ``indices`` (in that order)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        return TextDataset(
            tuple(self.texts[i] for i in idx),
            self.labels[idx],
            self.class_names,
            self.name,
        )


def _default_delimiter(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in ("", ".tsv", ".txt"):
        return "\t"
    if suffix == ".csv":
        return ","
    raise DataError(
        f"Cannot tell the delimiter of a {suffix!r} file.",
        value=str(path),
        fix="Pass delimiter=',' or delimiter='\\t'.",
    )


def _resolve(
    column: int | str | None, header: list[str] | None, width: int, role: str
) -> int:
    if isinstance(column, str):
        if header is None:
            raise DataError(
                f"{role}_column given by name but the file has no header.",
                value=column,
                fix=f"Give {role}_column as a 0-based index, or pass has_header=True.",
            )
        lowered = [h.strip().lower() for h in header]
        if column.strip().lower() not in lowered:
            raise DataError(
                f"{role} column not found; header columns: {header}.",
                value=column,
                fix=f"Pass one of the header names as {role}_column.",
            )
        return lowered.index(column.strip().lower())
    if not 0 <= column < width:
        raise DataError(
            f"{role} column index out of range for rows of {width} field(s).",
            value=column,
            fix=f"Use an index in [0, {width}).",
        )
    return column


def _guess_columns(
    text_column: int | str | None,
    label_column: int | str | None,
    header: list[str] | None,
    width: int,
) -> tuple[int | str, int | str]:
    if header is not None:
        if text_column is None:
            text_column = next(
                (h for h in header if h.strip().lower() in TEXT_COLUMN_NAMES), None
            )
        if label_column is None:
            label_column = next(
                (h for h in header if h.strip().lower() in LABEL_COLUMN_NAMES), None
            )
    if width == 2:  # label<sep>text is the common layout (SMS Spam Collection)
        if text_column is None and label_column is None:
            text_column, label_column = 1, 0
        elif text_column is None:
            text_column = 1 - _resolve(label_column, header, width, "label")
        elif label_column is None:
            label_column = 1 - _resolve(text_column, header, width, "text")
    if text_column is None or label_column is None:
        raise DataError(
            "Cannot tell which columns hold the text and the label.",
            value=header if header is not None else f"{width} columns, no header",
            fix="Pass text_column= and label_column= (a header name or a 0-based index).",
        )
    return text_column, label_column


def load_text_table(
    path: str | Path,
    *,
    text_column: int | str | None = None,
    label_column: int | str | None = None,
    delimiter: str | None = None,
    has_header: bool | None = None,
) -> TextDataset:
    """Load a text classification table (CSV or TSV, UTF-8).

    Parameters
    ----------
    path : str or Path
        The table. ``.csv`` files are comma-separated (standard quoting);
        ``.tsv``, ``.txt`` and files without an extension are tab-separated with
        quote characters taken literally.
    text_column, label_column : int or str, optional
        Column by 0-based index or header name. Default: header names such as
        ``text``/``message`` and ``label``/``class``; for two columns without
        header, label in column 0 and text in column 1.
    delimiter : str, optional
        Field separator; overrides the choice by extension.
    has_header : bool, optional
        Whether the first row names the columns. Default: yes when a column is
        given by name or a first-row cell is a known column name.

    Returns
    -------
    TextDataset
        Class names are the sorted distinct label strings; named after the file stem.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("Text table not found.", value=str(path), fix="Check the path.")
    delimiter = delimiter or _default_delimiter(path)
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    try:
        with path.open(encoding="utf-8", newline="") as fh:
            reader = csv.reader(fh, delimiter=delimiter, quoting=quoting)
            rows = [(reader.line_num, row) for row in reader if row]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(
            f"Cannot parse {path} as a delimited UTF-8 table ({exc}).",
            value=str(path),
            fix="Save the file as UTF-8 and check the delimiter and quoting.",
        ) from exc
    if not rows:
        raise DataError("Text table is empty.", value=str(path))
    first = rows[0][1]
    if has_header is None:
        has_header = (
            isinstance(text_column, str)
            or isinstance(label_column, str)
            or any(
                cell.strip().lower() in TEXT_COLUMN_NAMES + LABEL_COLUMN_NAMES
                for cell in first
            )
        )
    header = first if has_header else None
    body = rows[1:] if has_header else rows
    width = len(first)
    text_col, label_col = _guess_columns(text_column, label_column, header, width)
    t_idx = _resolve(text_col, header, width, "text")
    l_idx = _resolve(label_col, header, width, "label")
    texts, raw_labels = [], []
    for line, row in body:
        if len(row) != width:
            raise DataError(
                f"Line {line} of {path.name} has {len(row)} field(s), expected {width}.",
                value=delimiter.join(row)[:80],
                fix="Fix the line; with a comma delimiter, quote texts that contain commas.",
            )
        text, label = row[t_idx], row[l_idx].strip()
        if not text.strip() or not label:
            raise DataError(
                f"Line {line} of {path.name} has an empty {'label' if text.strip() else 'text'}.",
                value=delimiter.join(row)[:80],
                fix="Remove the line or fill in the field.",
            )
        texts.append(text)
        raw_labels.append(label)
    if not texts:
        raise DataError("Text table has a header but no rows.", value=str(path))
    names = tuple(sorted(set(raw_labels)))
    lookup = {name: i for i, name in enumerate(names)}
    labels = np.array([lookup[x] for x in raw_labels], dtype=np.int64)
    return TextDataset(tuple(texts), labels, names, path.stem)

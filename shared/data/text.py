"""Text classification data sets read from CSV/TSV tables (e.g. the SMS Spam Collection).

A table is read with the ``csv`` module. A row without a label or text, or with the
wrong number of fields, is skipped with a warning naming its line (``strict=True``
refuses instead) and counted in ``skipped``; :class:`TextTable` keeps every column and
the header so that augmented copies can be written in the input's own layout.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedaug.errors import ConfigError, DataError

__all__ = [
    "LABEL_COLUMN_NAMES",
    "QUOTING",
    "TEXT_COLUMN_NAMES",
    "TextDataset",
    "TextTable",
    "encode_labels",
    "load_text_table",
    "read_text_table",
]

log = logging.getLogger("fedaug.data")

#: Header names recognised (case-insensitively) when no column is given.
TEXT_COLUMN_NAMES = ("text", "message", "sms", "sentence", "review", "content", "body")
LABEL_COLUMN_NAMES = ("label", "labels", "class", "category", "target", "y")
#: How fields may be quoted: ``"auto"`` (see :func:`read_text_table`), ``"csv"`` (the
#: csv module's standard quoting) or ``"none"`` (quote characters are plain text).
QUOTING = ("auto", "csv", "none")
#: Skipped rows warned about one by one; the rest in one line.
_MAX_ROW_WARNINGS = 20


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
    skipped : tuple of str, default ()
        Rows the loader left out, ``"file line N: reason"`` each.
    """

    texts: tuple[str, ...]
    labels: np.ndarray
    class_names: tuple[str, ...]
    name: str
    skipped: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "skipped", tuple(self.skipped))
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
            self.skipped,
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
    if isinstance(column, bool) or not isinstance(column, int) or not 0 <= column < width:
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
            fix="Pass text_column= and label_column= (a header name or a 0-based index; "
            "on the command line --text-column and --label-column).",
        )
    return text_column, label_column


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def encode_labels(
    raw: Sequence[str], *, where: str, allow_indices: bool = False
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Class indices and class names from label strings.

    Parameters
    ----------
    raw : sequence of str
        One label per example (already stripped).
    where : str
        Where the labels come from, for the error message.
    allow_indices : bool, default False
        Take labels that are all whole numbers >= 0 as class indices (names ``"0"``
        .. ``"max"``). Otherwise every distinct label is a class name.

    Returns
    -------
    indices : np.ndarray
        ``int64`` of shape ``(N,)``.
    names : tuple of str
        The class names, sorted (numerically when every label is a number).

    Raises
    ------
    DataError
        If every label is a number and some are not whole (0.5, 1.5, nan): such a
        column holds a real-valued target, not classes, and is neither rounded nor cut.
    """
    numbers = [_number(x) for x in raw]
    numeric = bool(raw) and all(n is not None for n in numbers)
    if numeric:
        bad = sorted({x for x, n in zip(raw, numbers, strict=True)
                      if not math.isfinite(n) or n != round(n)})
        if bad:
            raise DataError(
                f"{where} has labels that are not whole numbers; a class label is a name "
                "or an index 0, 1, ...",
                value=bad[:5],
                fix="Use class names or indices; a real-valued target (score, probability) "
                "is not a class and is not rounded or cut here.",
            )
        if allow_indices and min(numbers) >= 0:
            indices = np.array([int(n) for n in numbers], dtype=np.int64)
            return indices, tuple(str(i) for i in range(int(indices.max()) + 1))
        names = tuple(sorted(set(raw), key=lambda x: (float(x), x)))
    else:
        names = tuple(sorted(set(raw)))
    lookup = {name: i for i, name in enumerate(names)}
    return np.array([lookup[x] for x in raw], dtype=np.int64), names


@dataclass(frozen=True)
class TextTable:
    """A text table as read: its header, its usable rows and the roles of its columns.

    Parameters
    ----------
    path : Path
        The file read.
    header : tuple of str or None
        The first row when it names the columns.
    rows : tuple of tuple of str
        The usable rows, every field as read (rows without a label or text are in
        ``skipped`` instead).
    text_index, label_index : int
        0-based columns of the text and the label.
    delimiter : str
        Field separator.
    quoted : bool
        Whether fields use the csv module's standard quoting (else quote characters
        are plain text, as in the SMS Spam Collection).
    skipped : tuple of str, default ()
        Rows left out, ``"file line N: reason"`` each.
    newline : str, default "\n"
        Line ending of the file.
    """

    path: Path
    header: tuple[str, ...] | None
    rows: tuple[tuple[str, ...], ...]
    text_index: int
    label_index: int
    delimiter: str
    quoted: bool
    skipped: tuple[str, ...] = ()
    newline: str = "\n"

    @property
    def texts(self) -> tuple[str, ...]:
        """The text of each usable row."""
        return tuple(row[self.text_index] for row in self.rows)

    def dataset(self) -> TextDataset:
        """The labelled texts; class names are the sorted distinct labels."""
        raw = [row[self.label_index].strip() for row in self.rows]
        labels, names = encode_labels(raw, where=self.path.name)
        return TextDataset(self.texts, labels, names, self.path.stem, self.skipped)

    def with_texts(self, texts: Sequence[str]) -> list[tuple[str, ...]]:
        """The rows with their text replaced by ``texts`` (one per row), other fields kept."""
        if len(texts) != len(self.rows):
            raise DataError("One text per row is needed.", value=(len(texts), len(self.rows)))
        i = self.text_index
        return [(*row[:i], text, *row[i + 1:]) for row, text in zip(self.rows, texts,
                                                                    strict=True)]

    def format(self, rows: Sequence[Sequence[str]]) -> str:
        """The header and ``rows`` in this table's layout (delimiter, quoting, newline)."""
        out = [self.header] if self.header is not None else []
        out += list(rows)
        if self.quoted:
            buf = io.StringIO()
            writer = csv.writer(buf, delimiter=self.delimiter, quoting=csv.QUOTE_MINIMAL,
                                lineterminator=self.newline)
            writer.writerows(out)
            return buf.getvalue()
        bad = str.maketrans({self.delimiter: " ", "\r": " ", "\n": " "})
        return "".join(self.delimiter.join(f.translate(bad) for f in row) + self.newline
                       for row in out)


def _parse(raw: str, delimiter: str, quoted: bool, strict: bool) -> list[tuple[int, list[str]]]:
    """Non-blank rows with the line each starts on."""
    reader = csv.reader(io.StringIO(raw, newline=""), delimiter=delimiter, strict=strict,
                        quoting=csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE)
    rows, start = [], 1
    for row in reader:
        if any(cell.strip() for cell in row):
            rows.append((start, row))
        start = reader.line_num + 1
    return rows


def _well_formed(rows: list[tuple[int, list[str]]]) -> int:
    return sum(len(row) == len(rows[0][1]) for _, row in rows) if rows else 0


def _read_rows(raw: str, delimiter: str, quoting: str) -> tuple[list, bool]:
    if quoting == "none":
        return _parse(raw, delimiter, False, False), False
    if quoting == "csv" or delimiter != "\t":
        return _parse(raw, delimiter, True, False), True
    # A TSV: standard quoting when it parses cleanly and splits the rows at least as
    # well as reading quotes as text; the SMS Spam Collection has texts like
    # '"Happy valentines day" I know...' that only make sense as plain text.
    literal = _parse(raw, delimiter, False, False)
    try:
        quoted = _parse(raw, delimiter, True, True)
    except csv.Error:
        return literal, False
    if _well_formed(quoted) >= _well_formed(literal):
        return quoted, True
    return literal, False


def read_text_table(
    path: str | Path,
    *,
    text_column: int | str | None = None,
    label_column: int | str | None = None,
    delimiter: str | None = None,
    has_header: bool | None = None,
    quoting: str = "auto",
    strict: bool = False,
) -> TextTable:
    """Read a text classification table (CSV or TSV, UTF-8) keeping all its columns.

    Parameters
    ----------
    path : str or Path
        The table. ``.csv`` files are comma-separated; ``.tsv``, ``.txt`` and files
        without an extension are tab-separated.
    text_column, label_column : int or str, optional
        Column by 0-based index or header name. Default: header names such as
        ``text``/``message``/``review`` and ``label``/``class``; for two columns
        without header, label in column 0 and text in column 1.
    delimiter : str, optional
        Field separator; overrides the choice by extension.
    has_header : bool, optional
        Whether the first row names the columns. Default: yes when a column is
        given by name or a first-row cell is a known column name.
    quoting : {"auto", "csv", "none"}, default "auto"
        ``"csv"``: the csv module's standard quoting (``"a ""b"", c"`` is one field,
        which may span lines); ``"none"``: quote characters are plain text. ``"auto"``
        is ``"csv"`` for comma-separated files, and for tab-separated files when they
        parse cleanly that way (a quoted review TSV), else ``"none"`` (the SMS Spam
        Collection, whose texts start with unbalanced quotes).
    strict : bool, default False
        Refuse (DataError naming the line) a row without a label or text, or with the
        wrong number of fields, instead of skipping it with a warning.

    Returns
    -------
    TextTable

    Raises
    ------
    DataError
        If the file is missing, not UTF-8, empty, the columns cannot be found, or no
        row is usable.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("Text table not found.", value=str(path), fix="Check the path.")
    if quoting not in QUOTING:
        raise ConfigError("Unknown quoting.", value=quoting,
                          fix=f"Use one of {', '.join(QUOTING)}.")
    delimiter = delimiter or _default_delimiter(path)
    try:
        raw = path.read_bytes().decode("utf-8-sig")
        rows, quoted = _read_rows(raw, delimiter, quoting)
    except (UnicodeDecodeError, csv.Error, OSError) as exc:
        raise DataError(
            f"Cannot parse {path} as a delimited UTF-8 table ({exc}).",
            value=str(path),
            fix="Save the file as UTF-8 and check the delimiter and quoting.",
        ) from exc
    if not rows:
        raise DataError("Text table is empty.", value=str(path),
                        fix="Add rows of a label and a text.")
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
    if header is not None:
        width = len(header)
    else:  # the most common row width, so that one odd first row does not decide it
        widths = [len(row) for _, row in body]
        width = max(set(widths), key=lambda w: (widths.count(w), -w))
    text_col, label_col = _guess_columns(text_column, label_column, header, width)
    t_idx = _resolve(text_col, header, width, "text")
    l_idx = _resolve(label_col, header, width, "label")
    if t_idx == l_idx:
        raise DataError("The text and label columns are the same column.", value=t_idx,
                        fix="Pass different text_column and label_column.")
    kept: list[tuple[str, ...]] = []
    skipped: list[str] = []
    for line, row in body:
        if len(row) != width:
            reason = f"{len(row)} field(s), expected {width}"
        elif not row[l_idx].strip():
            reason = "no label"
        elif not row[t_idx].strip():
            reason = "empty text"
        else:
            kept.append(tuple(row))
            continue
        what = f"{path.name} line {line}: {reason}"
        if strict:
            raise DataError(
                f"Line {line} of {path.name}: {reason} (strict mode refuses bad rows).",
                value=delimiter.join(row)[:80],
                fix="Fix or remove the line (with a comma delimiter, quote texts that "
                "contain commas), or leave strict off to skip it.",
            )
        if len(skipped) < _MAX_ROW_WARNINGS:
            log.warning("skipped %s", what)
        skipped.append(what)
    if len(skipped) > _MAX_ROW_WARNINGS:
        log.warning("skipped %d more rows of %s (%d of %d in all)",
                    len(skipped) - _MAX_ROW_WARNINGS, path.name, len(skipped), len(body))
    if not kept:
        raise DataError(
            f"Text table {path.name} has no usable row ({len(skipped)} skipped"
            + (f", e.g. {skipped[0]}" if skipped else "") + ").",
            value=str(path),
            fix="Give every row a label and a text; check the delimiter and the columns.",
        )
    newline = "\r\n" if "\r\n" in raw[: raw.find("\n") + 1] else "\n"
    return TextTable(path, tuple(header) if header is not None else None, tuple(kept),
                     t_idx, l_idx, delimiter, quoted, tuple(skipped), newline)


def load_text_table(
    path: str | Path,
    *,
    text_column: int | str | None = None,
    label_column: int | str | None = None,
    delimiter: str | None = None,
    has_header: bool | None = None,
    quoting: str = "auto",
    strict: bool = False,
) -> TextDataset:
    """Load a text classification table (CSV or TSV, UTF-8).

    Parameters are those of :func:`read_text_table`.

    Returns
    -------
    TextDataset
        Class names are the sorted distinct label strings (numerically sorted when all
        are numbers); named after the file stem; ``skipped`` lists the rows left out.

    Raises
    ------
    DataError
        As :func:`read_text_table`, and when every label is a number but some are not
        whole (0.5): that is a real-valued target, not a class.
    """
    return read_text_table(
        path, text_column=text_column, label_column=label_column, delimiter=delimiter,
        has_header=has_header, quoting=quoting, strict=strict,
    ).dataset()

"""DICOM images for the loaders: pixel data to 8 bits, and the labels CSV of a DICOM folder.

A DICOM file stores raw detector values; :func:`read_dicom` applies the modality rescale
(``RescaleSlope``/``RescaleIntercept``, or a Modality LUT) to get physical units such as
Hounsfield units, then a linear display window (DICOM PS3.3 C.11.2.1.2.1) to 8 bits, and
inverts MONOCHROME1 images so that dense tissue is bright in every image. pydicom is
imported on first use, so that importing the data package stays cheap.
"""

from __future__ import annotations

import csv
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedaug.data.text import LABEL_COLUMN_NAMES, encode_labels
from fedaug.errors import ConfigError, DataError

__all__ = [
    "DICOM_EXTENSIONS",
    "LabelTable",
    "UnreadableDicomError",
    "parse_window",
    "read_dicom",
    "read_label_csv",
]

log = logging.getLogger("fedaug.data")

#: File endings taken as DICOM when a folder is inspected (files named in a labels CSV
#: are read whatever their ending).
DICOM_EXTENSIONS = (".dcm", ".dicom")
#: Header names (case-insensitive) of the labels CSV's file column.
FILE_COLUMN_NAMES = ("file", "filename", "file_name", "path", "filepath", "image", "dicom",
                     "name", "fname")
SPLIT_COLUMN_NAMES = ("split", "subset")
_DECODER_HINT = (
    "Install a decoder for it (pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg, "
    "see pydicom's 'Handling compressed image data'), or decompress the files first "
    "(e.g. gdcmconv --raw)."
)


class UnreadableDicomError(DataError):
    """A file that cannot be read as one DICOM image; ``reason`` says why in a few words."""

    def __init__(self, path: Path, reason: str, fix: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"Cannot read DICOM file {path}: {reason}.", value=str(path), fix=fix)


def parse_window(window: str | Sequence[float]) -> tuple[float, float] | None:
    """Parse a display window: ``"auto"`` (None) or a center and a width.

    Parameters
    ----------
    window : "auto", "center,width" or (center, width)
        The width must be at least 1, in the units after the modality rescale.

    Returns
    -------
    tuple of float or None
        ``(center, width)``, or None for ``"auto"``.

    Raises
    ------
    ConfigError
        If the window is neither ``"auto"`` nor two finite numbers with width >= 1.
    """
    if isinstance(window, str):
        if window.strip().lower() == "auto":
            return None
        parts = window.split(",")
    else:
        parts = list(window)
    try:
        if len(parts) != 2:
            raise ValueError
        center, width = (float(x) for x in parts)
    except (TypeError, ValueError):
        center = width = float("nan")
    if not (np.isfinite(center) and np.isfinite(width) and width >= 1):
        raise ConfigError(
            "A DICOM window is 'auto' or 'center,width' with a width of at least 1.",
            value=window,
            fix="Use e.g. window='40,400' (a soft-tissue CT window in HU) or 'auto'.",
        )
    return center, width


def _first(value: object) -> float | None:
    """A number from a DICOM value that may hold several (take the first)."""
    if value is None:
        return None
    if not isinstance(value, (str, bytes)) and isinstance(value, Sequence):
        if not value:
            return None
        value = value[0]
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def _file_window(ds) -> tuple[float, float] | None:
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    if center is None or width is None or width < 1:
        return None
    return center, width


def _percentile_window(values: np.ndarray) -> tuple[float, float]:
    """The window that maps the 0.5th percentile to 0 and the 99.5th to 255."""
    lo, hi = (float(v) for v in np.percentile(values, [0.5, 99.5]))
    return (lo + hi + 1.0) / 2.0, hi - lo + 1.0


def _apply_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM's linear VOI function to 0..255 (a threshold when the width is 1)."""
    if width <= 1:
        scaled = (values > center - 0.5).astype(np.float64)
    else:
        scaled = np.clip((values - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)
    return np.rint(scaled * 255.0).astype(np.uint8)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def read_dicom(path: str | Path, *, window: str | Sequence[float] = "auto") -> np.ndarray:
    """Read one DICOM image as 8 bits: modality rescale, window, MONOCHROME1 inverted.

    Parameters
    ----------
    path : str or Path
        A DICOM file holding one image (MONOCHROME1, MONOCHROME2 or RGB).
    window : "auto", "center,width" or (center, width), default "auto"
        ``"auto"`` takes the file's WindowCenter/WindowWidth (the first pair when there
        are several), else the 0.5 and 99.5 percentiles of the rescaled pixels. RGB
        images are not windowed.

    Returns
    -------
    np.ndarray
        ``uint8`` of shape ``(H, W)``, or ``(H, W, 3)`` for RGB.

    Raises
    ------
    ConfigError
        If ``window`` is malformed (checked before the file is read).
    UnreadableDicomError
        A `DataError` naming the file: not DICOM, damaged, no pixel data, compressed
        with a transfer syntax no installed decoder reads, several frames, or a colour
        model other than MONOCHROME1/2 and RGB.
    """
    chosen = parse_window(window)
    path = Path(path)
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut

    damaged = "Replace or remove the damaged file."
    if not path.is_file():
        raise UnreadableDicomError(path, "file not found", "Check the file name in the CSV.")
    with warnings.catch_warnings():  # pydicom warns about every odd tag; we report once
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(path)
        except InvalidDicomError as exc:
            raise UnreadableDicomError(path, "not a DICOM file (no DICM marker)",
                                       damaged) from exc
        except Exception as exc:  # truncated or garbled headers raise many types
            raise UnreadableDicomError(path, f"damaged header ({_short(exc)})",
                                       damaged) from exc
        if "PixelData" not in ds:
            raise UnreadableDicomError(
                path, "no pixel data (not an image, e.g. a report or presentation state)",
                "Leave non-image DICOM files out of the labels CSV.")
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
        frames = _first(ds.get("NumberOfFrames")) or 1
        if frames > 1:
            raise UnreadableDicomError(path, f"{int(frames)} frames; one image per file is "
                                       "supported", "Split the series into single images.")
        if photometric not in ("MONOCHROME1", "MONOCHROME2", "RGB"):
            raise UnreadableDicomError(path, f"unsupported PhotometricInterpretation "
                                       f"{photometric}", "Convert it to MONOCHROME2 or RGB.")
        try:
            pixels = ds.pixel_array
        except Exception as exc:  # decoders raise RuntimeError, NotImplementedError, ...
            syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
            if syntax is not None and syntax.is_compressed:
                raise UnreadableDicomError(
                    path, f"compressed pixel data ({syntax.name}) that no installed decoder "
                    f"reads ({_short(exc)})", _DECODER_HINT) from exc
            raise UnreadableDicomError(path, f"damaged pixel data ({_short(exc)})",
                                       damaged) from exc
        if photometric == "RGB":
            if pixels.ndim != 3 or pixels.shape[-1] != 3:
                raise UnreadableDicomError(path, f"RGB pixel array of shape {pixels.shape}",
                                           damaged)
            if pixels.dtype == np.uint8:
                return np.ascontiguousarray(pixels)
            return _apply_window(pixels.astype(np.float64), *_percentile_window(pixels))
        if pixels.ndim != 2:
            raise UnreadableDicomError(path, f"pixel array of shape {pixels.shape} is not "
                                       "one grayscale image", damaged)
        values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
    center, width = chosen or _file_window(ds) or _percentile_window(values)
    out = _apply_window(values, center, width)
    return 255 - out if photometric == "MONOCHROME1" else out


@dataclass(frozen=True)
class LabelTable:
    """The rows of a DICOM labels CSV that a loader reads.

    Parameters
    ----------
    files : tuple of str
        File names relative to the folder, in CSV order.
    labels : tuple of int
        Class index of each file.
    class_names : tuple of str
        Names of the classes of the whole CSV (every split), so that splits agree.
    skipped : tuple of str
        Rows left out, ``"labels.csv line N: reason"`` each.
    """

    files: tuple[str, ...]
    labels: tuple[int, ...]
    class_names: tuple[str, ...]
    skipped: tuple[str, ...] = ()


def _find(header: list[str], names: Sequence[str]) -> int | None:
    lowered = [h.strip().lower() for h in header]
    return next((i for i, h in enumerate(lowered) if h in names), None)


def read_label_csv(
    path: str | Path, folder: str | Path, *, split: str = "train", strict: bool = False
) -> LabelTable:
    """Read the labels CSV of a DICOM folder: ``file, label`` (and optionally ``split``).

    Parameters
    ----------
    path : str or Path
        Comma-separated (tab-separated for ``.tsv``/``.txt``), UTF-8, standard CSV
        quoting. A header is recognised by names such as ``file``/``filename`` and
        ``label``/``class`` (and ``split``); without one, column 0 is the file and
        column 1 the label. A label is a class name (classes sorted by name) or a class
        index 0, 1, ... when every label is a whole number; ``0.5`` is refused.
    folder : str or Path
        The DICOM folder; each file must lie inside it.
    split : str, default "train"
        With a split column: that split's rows, or ``"all"``. Without one, ``"train"``
        and ``"all"`` give every row.
    strict : bool, default False
        Refuse instead of skipping a row without a file or label, one naming a file
        outside the folder, or a repeated file.

    Returns
    -------
    LabelTable

    Raises
    ------
    DataError
        If the CSV is missing, unreadable, has no rows, has labels that are not whole
        numbers, or the split does not exist.
    """
    path, folder = Path(path), Path(folder)
    if not path.is_file():
        raise DataError("Labels CSV not found.", value=str(path),
                        fix="Pass the CSV of 'file,label' rows that goes with the DICOM folder.")
    delimiter = "\t" if path.suffix.lower() in (".tsv", ".txt") else ","
    try:
        with path.open(encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh, delimiter=delimiter)
            rows = [(reader.line_num, row) for row in reader if any(c.strip() for c in row)]
    except (UnicodeDecodeError, csv.Error, OSError) as exc:
        raise DataError(f"Cannot read labels CSV {path} ({exc}).", value=str(path),
                        fix="Save it as UTF-8 CSV with rows 'file,label'.") from exc
    if not rows:
        raise DataError("Labels CSV is empty.", value=str(path),
                        fix="Add one 'file,label' row per DICOM file.")
    first = rows[0][1]
    known = FILE_COLUMN_NAMES + LABEL_COLUMN_NAMES + SPLIT_COLUMN_NAMES
    has_header = any(c.strip().lower() in known for c in first) or (
        len(rows) > 1 and not (folder / first[0].strip()).is_file()
        and (folder / rows[1][1][0].strip()).is_file()
    )
    file_col, label_col, split_col = 0, 1, None
    if has_header:
        file_col = _find(first, FILE_COLUMN_NAMES)
        label_col = _find(first, LABEL_COLUMN_NAMES)
        split_col = _find(first, SPLIT_COLUMN_NAMES)
        if file_col is None:
            file_col = 0 if label_col != 0 else 1
        if label_col is None:
            label_col = next(i for i in range(len(first)) if i not in (file_col, split_col))
        rows = rows[1:]
    if split_col is None and split not in ("train", "all"):
        raise DataError(
            f"The labels CSV has no split column, so split {split!r} does not exist.",
            value=str(path),
            fix="Use split='train' for every row, or add a 'split' column (train/val/test).",
        )
    skipped: list[str] = []

    def skip(line: int, reason: str) -> None:
        what = f"{path.name} line {line}: {reason}"
        if strict:
            raise DataError(f"{what} (strict mode refuses bad rows).", value=str(path),
                            fix="Fix or remove the row, or leave strict off to skip it.")
        log.warning("skipped %s", what)
        skipped.append(what)

    root = folder.resolve()
    entries: list[tuple[str, str, str]] = []
    seen: set[str] = set()
    width = max(file_col, label_col, split_col or 0) + 1
    for line, row in rows:
        if len(row) < width:
            skip(line, f"{len(row)} field(s), expected at least {width}")
            continue
        file, label = row[file_col].strip(), row[label_col].strip()
        if not file:
            skip(line, "no file name")
            continue
        if not label:
            skip(line, f"no label for {file}")
            continue
        target = (folder / file).resolve()
        if root != target and root not in target.parents:
            skip(line, f"{file} lies outside the folder {folder}")
            continue
        if file in seen:
            skip(line, f"{file} is listed again")
            continue
        seen.add(file)
        entries.append((file, label, row[split_col].strip().lower() if split_col is not None
                        else ""))
    if not entries:
        raise DataError(f"Labels CSV {path.name} has no usable row ({len(skipped)} skipped).",
                        value=str(path), fix="Add rows 'file,label', one per DICOM file.")
    indices, names = encode_labels([e[1] for e in entries], where=f"labels CSV {path.name}",
                                   allow_indices=True)
    chosen = [i for i, e in enumerate(entries)
              if split == "all" or split_col is None or e[2] == split]
    if not chosen:
        found = sorted({e[2] for e in entries})
        raise DataError(f"The labels CSV has no rows of split {split!r}; splits: {found}.",
                        value=split, fix=f"Use one of {found} or 'all'.")
    return LabelTable(tuple(entries[i][0] for i in chosen),
                      tuple(int(indices[i]) for i in chosen), names, tuple(skipped))

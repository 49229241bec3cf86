"""A second, independent record of what a site spent on a data set.

The ledger lives in the site's state folder; this record lives elsewhere (node config
``spending-registry``, by default ``~/.fedaug/spending``) and is keyed by a fingerprint of
the data itself. For each data set it keeps how many spendings the ledger held and the hash
of the last one. A site refuses to start when its ledger holds fewer entries than this
record, or entries whose hash chain does not lead to the recorded hash: a wiped state
folder, a ledger restored from an older backup, or an edited chain with recomputed hashes.

It protects against accidents and a naive restore. It cannot protect against an
administrator who deletes or rewrites both records: the site's own operator is trusted
with its budget.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedaug.atomic import atomic_write_json
from fedaug.errors import LedgerError

__all__ = ["SpendingRegistry", "RegistryRecord", "data_fingerprint", "source_fingerprint",
           "default_registry_dir"]

_FORMAT = "fedaug-spending-record"


def default_registry_dir() -> Path:
    """``~/.fedaug/spending``: outside every state folder."""
    return Path.home() / ".fedaug" / "spending"


def data_fingerprint(images: np.ndarray, labels: np.ndarray) -> str:
    """SHA-256 of the records themselves (pixels and labels), whatever file they came from."""
    h = hashlib.sha256()
    for arr in (np.ascontiguousarray(images), np.ascontiguousarray(labels)):
        h.update(str((arr.dtype.str, arr.shape)).encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def source_fingerprint(*paths: str | Path) -> str:
    """SHA-256 of data files as they are on disk (a file, or every file of a folder, by
    relative path and content): the same whatever size or format the server asks for."""
    h = hashlib.sha256()
    for root in (Path(p) for p in paths if str(p)):
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            h.update(str(path.relative_to(root) if path != root else path.name).encode())
            with open(path, "rb") as fh:
                for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class RegistryRecord:
    """How far a data set's ledger had got: ``count`` entries ending in ``last_hash``."""

    site: str
    count: int
    last_hash: str
    epsilon: float


class SpendingRegistry:
    """The records of one registry folder, one JSON file per data fingerprint.

    Parameters
    ----------
    folder : str or Path
        Where the records live (node config ``spending-registry``).
    fingerprint : str
        The data set's :func:`data_fingerprint`.
    """

    def __init__(self, folder: str | Path, fingerprint: str) -> None:
        self.folder = Path(folder)
        self.fingerprint = fingerprint

    @property
    def path(self) -> Path:
        return self.folder / f"{self.fingerprint[:32]}.json"

    def read(self) -> RegistryRecord | None:
        """The record of this data set, or None when it never spent."""
        if not self.path.exists():
            return None
        try:
            raw: dict[str, Any] = json.loads(self.path.read_text(encoding="utf-8"))
            if raw.get("format") != _FORMAT or raw.get("fingerprint") != self.fingerprint:
                raise ValueError("not a spending record of this data set")
            return RegistryRecord(site=str(raw["site"]), count=int(raw["count"]),
                                  last_hash=str(raw["last-hash"]), epsilon=float(raw["epsilon"]))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise LedgerError(f"The spending record {self.path} cannot be read: {err}.",
                              fix="Restore it from a backup; never delete or edit it.") from err

    def check(self, hashes: list[str], *, ledger_path: Path) -> None:
        """Refuse a ledger (its entries' hashes, in order) that is behind this record."""
        record = self.read()
        if record is None or record.count == 0:
            return
        if len(hashes) < record.count or hashes[record.count - 1] != record.last_hash:
            raise LedgerError(
                f"The privacy ledger {ledger_path} holds {len(hashes)} spending(s), but the "
                f"spending record {self.path} shows that this data set already spent "
                f"{record.count} (epsilon {record.epsilon:.3f}, site {record.site!r}): the "
                "state folder was wiped, restored from an older copy, or edited.",
                fix="Restore the site's state folder from its latest backup. fedaug never "
                "starts a data set from zero once it has spent.")

    def record(self, *, site: str, count: int, last_hash: str, epsilon: float) -> None:
        """Move the record forward to the ledger's new end (after the ledger is written)."""
        atomic_write_json(self.path, {"format": _FORMAT, "fingerprint": self.fingerprint,
                                      "site": site, "count": int(count),
                                      "last-hash": last_hash, "epsilon": float(epsilon)})

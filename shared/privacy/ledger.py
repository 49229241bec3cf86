"""The per-site privacy ledger: an append-only, hash-chained history of every spending."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedaug.atomic import atomic_write_json
from fedaug.errors import LedgerError
from fedaug.privacy.accounting import Spend, compose_epsilon
from fedaug.privacy.registry import SpendingRegistry

__all__ = ["LedgerEntry", "PrivacyLedger", "open_ledger_readonly", "LEDGER_FILE", "HEAD_FILE"]

LEDGER_FILE = "privacy-ledger.json"
HEAD_FILE = "privacy-ledger.head.json"
_FORMAT = "fedaug-privacy-ledger"
_VERSION = 1
_GENESIS = "0" * 64
MECHANISMS = ("dp-sgd", "gaussian", "exponential")
_FIX = (
    "Restore the ledger from a backup of the site's state folder. Never delete or edit it: "
    "fedaug refuses to start a site from zero spending once it has a history."
)


@dataclass(frozen=True)
class LedgerEntry:
    """One spending: ``steps`` Gaussian steps at ``noise_multiplier`` and ``sample_rate``."""

    mechanism: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    run: str
    round: int
    time: float
    epsilon: float = 0.0  # pure-DP releases (mechanism "exponential") only
    #: what was released ("count", "warm-start", "warm-start-spread", "dp-sgd", "policy-choice",
    #: "central-update")
    release: str = ""
    #: the released value itself where it is one number (the noisy count), else None
    value: float | None = None

    def to_dict(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"epsilon": self.epsilon} if self.mechanism == "exponential" else {}
        if self.release:
            extra["release"] = self.release
        if self.value is not None:
            extra["value"] = self.value
        return {**extra,
            "mechanism": self.mechanism,
            "noise-multiplier": self.noise_multiplier,
            "sample-rate": self.sample_rate,
            "steps": self.steps,
            "delta": self.delta,
            "run": self.run,
            "round": self.round,
            "time": self.time,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LedgerEntry:
        return cls(
            mechanism=str(d["mechanism"]),
            noise_multiplier=float(d["noise-multiplier"]),
            sample_rate=float(d["sample-rate"]),
            steps=int(d["steps"]),
            delta=float(d["delta"]),
            run=str(d["run"]),
            round=int(d["round"]),
            time=float(d["time"]),
            epsilon=float(d.get("epsilon", 0.0)),
            release=str(d.get("release", "")),
            value=None if d.get("value") is None else float(d["value"]),
        )

    @property
    def spend(self) -> Spend:
        return (self.noise_multiplier, self.sample_rate, self.steps)


def _digest(prev: str, body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256((prev + canonical).encode("utf-8")).hexdigest()


class PrivacyLedger:
    """A site's whole privacy history, stored in its state folder.

    Every append is written atomically (temporary file, fsync, rename) before the update
    that spent it leaves the site. Entries form a hash chain and a separate head file
    records how many there are, so a ledger that was truncated, edited or corrupted is
    refused with :class:`~fedaug.errors.LedgerError`; it is never silently reset.

    Parameters
    ----------
    state_dir : str or Path
        The site's state folder (node config ``state-dir``; ``OUT/sites/<site>`` in simulation).
    site : str
        The site's name, recorded in the ledger.
    delta : float
        The site's delta; fixed for the life of the ledger.
    registry : SpendingRegistry, optional
        The second record of this data set's spending (kept outside the state folder): a
        ledger behind it is refused, and every append moves it forward.
    """

    def __init__(self, state_dir: str | Path, *, site: str, delta: float,
                 registry: SpendingRegistry | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.site = site
        self.delta = float(delta)
        self.registry = registry
        self._entries: list[LedgerEntry] = []
        self._hashes: list[str] = []
        self._load()
        if registry is not None:
            registry.check(self._hashes, ledger_path=self.path)

    # -- reading ------------------------------------------------------------------
    @property
    def path(self) -> Path:
        return self.state_dir / LEDGER_FILE

    @property
    def entries(self) -> tuple[LedgerEntry, ...]:
        return tuple(self._entries)

    def history(self) -> list[Spend]:
        """The Gaussian spendings in Opacus's accountant layout."""
        return [e.spend for e in self._entries if e.mechanism != "exponential"]

    def pure_epsilons(self) -> list[float]:
        """Epsilons of the pure-DP releases (private policy choices)."""
        return [e.epsilon for e in self._entries if e.mechanism == "exponential"]

    def epsilon(self) -> float:
        """Epsilon composed over every entry, at the ledger's delta."""
        return compose_epsilon(self.history(), delta=self.delta, pure=self.pure_epsilons())

    def _load(self) -> None:
        head_path = self.state_dir / HEAD_FILE
        head = _read_json(head_path) if head_path.exists() else None
        if not self.path.exists():
            if head is not None and int(head.get("count", 0)) > 0:
                raise LedgerError(
                    f"The privacy ledger {self.path} is missing but its head file records "
                    f"{head.get('count')} spending(s).",
                    fix=_FIX,
                )
            return
        data = _read_json(self.path)
        problems = []
        if data.get("format") != _FORMAT or data.get("version") != _VERSION:
            problems.append(f"format/version is {data.get('format')!r}/{data.get('version')!r}")
        if data.get("site") != self.site:
            problems.append(f"it belongs to site {data.get('site')!r}, not {self.site!r}")
        if problems:
            raise LedgerError(f"Privacy ledger {self.path} refused: " + "; ".join(problems) + ".",
                              fix=_FIX)
        if float(data.get("delta", -1)) != self.delta:
            raise LedgerError(
                f"Privacy ledger {self.path} was kept at delta={data.get('delta')}, but the site "
                f"now asks for delta={self.delta}.",
                fix="Keep the site's delta fixed for the life of its state folder.",
            )
        prev = _GENESIS
        raw_entries = data.get("entries")
        if not isinstance(raw_entries, list):
            raise LedgerError(f"Privacy ledger {self.path} has no entry list.", fix=_FIX)
        for i, raw in enumerate(raw_entries):
            try:
                entry = LedgerEntry.from_dict(raw)
                body = entry.to_dict()
                ok = raw.get("prev") == prev and raw.get("hash") == _digest(prev, body)
            except (KeyError, TypeError, ValueError, AttributeError):
                ok = False
            if not ok:
                raise LedgerError(
                    f"Privacy ledger {self.path} is corrupted or was edited at entry {i}: "
                    "its hash chain does not match.",
                    fix=_FIX,
                )
            bad = (entry.mechanism not in MECHANISMS or entry.steps < 0
                   or (entry.mechanism == "exponential" and not entry.epsilon > 0)
                   or (entry.mechanism != "exponential" and entry.noise_multiplier <= 0))
            if bad:
                raise LedgerError(f"Privacy ledger {self.path} entry {i} is invalid.",
                                  value=raw, fix=_FIX)
            self._entries.append(entry)
            self._hashes.append(raw["hash"])
            prev = raw["hash"]
        if head is not None:
            count, last = int(head.get("count", -1)), head.get("last-hash")
            if count > len(self._entries) or (
                count > 0 and self._hashes[count - 1] != last
            ):
                raise LedgerError(
                    f"Privacy ledger {self.path} holds {len(self._entries)} entries but its head "
                    f"file records {count}: it was truncated or replaced.",
                    fix=_FIX,
                )

    # -- writing ------------------------------------------------------------------
    def append(self, *, mechanism: str, noise_multiplier: float = 0.0, sample_rate: float = 0.0,
               steps: int = 0, run: str, round: int, epsilon: float = 0.0, release: str = "",
               value: float | None = None) -> LedgerEntry:
        """Record a spending atomically and return it. Call before the release is sent."""
        if mechanism not in MECHANISMS:
            raise LedgerError(f"Unknown privacy mechanism {mechanism!r}.",
                              fix=f"Use one of {MECHANISMS}.")
        entry = LedgerEntry(
            mechanism=mechanism,
            noise_multiplier=float(noise_multiplier),
            sample_rate=float(sample_rate),
            steps=int(steps),
            delta=self.delta,
            run=str(run),
            round=int(round),
            time=time.time(),
            epsilon=float(epsilon),
            release=release,
            value=None if value is None else float(value),
        )
        prev = self._hashes[-1] if self._hashes else _GENESIS
        digest = _digest(prev, entry.to_dict())
        entries = [
            {**e.to_dict(), "prev": p, "hash": h}
            for e, p, h in zip(self._entries, [_GENESIS, *self._hashes][:-1], self._hashes,
                               strict=True)
        ]
        entries.append({**entry.to_dict(), "prev": prev, "hash": digest})
        atomic_write_json(self.path, {
            "format": _FORMAT,
            "version": _VERSION,
            "site": self.site,
            "accountant": "rdp",
            "delta": self.delta,
            "entries": entries,
        })
        # The head is written after the ledger: a crash in between leaves a ledger that is
        # one entry ahead of its head, which over-counts (safe), never under-counts.
        atomic_write_json(self.state_dir / HEAD_FILE, {"count": len(entries), "last-hash": digest})
        self._entries.append(entry)
        self._hashes.append(digest)
        if self.registry is not None:  # last: a crash before it leaves the record behind,
            # which the check accepts (the ledger extends the recorded chain)
            self.registry.record(site=self.site, count=len(self._entries), last_hash=digest,
                                 epsilon=self.epsilon())
        return entry

    def summary(self, *, budget: float | None = None) -> dict[str, Any]:
        """The ledger as one JSON-friendly object (``fedaug privacy show --json``)."""
        return {
            "site": self.site,
            "mechanism": "rdp",
            "delta": self.delta,
            "epsilon": self.epsilon(),
            "budget": budget,
            "entries": [
                {
                    "run": e.run,
                    "round": e.round,
                    "mechanism": e.mechanism,
                    "noise-multiplier": e.noise_multiplier,
                    "sample-rate": e.sample_rate,
                    "steps": e.steps,
                    "release": e.release,
                    "value": e.value,
                    "epsilon": _prefix_epsilon(self._entries[: i + 1], self.delta),
                }
                for i, e in enumerate(self._entries)
            ],
        }


def _prefix_epsilon(entries: list[LedgerEntry], delta: float) -> float:
    return compose_epsilon([e.spend for e in entries if e.mechanism != "exponential"],
                           delta=delta,
                           pure=[e.epsilon for e in entries if e.mechanism == "exponential"])


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise LedgerError(f"Privacy ledger file {path} cannot be read: {err}.", fix=_FIX) from err
    if not isinstance(data, dict):
        raise LedgerError(f"Privacy ledger file {path} is not a JSON object.", fix=_FIX)
    return data


def open_ledger_readonly(state_dir: str | Path) -> PrivacyLedger:
    """Open a ledger for reading, taking site and delta from the file itself."""
    data = _read_json(Path(state_dir) / LEDGER_FILE)
    return PrivacyLedger(state_dir, site=str(data.get("site")), delta=float(data.get("delta", 0)))


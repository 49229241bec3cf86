"""Privacy: the per-site ledger and the accounting math on its history."""

from fedaug.privacy.accounting import (
    MAX_NOISE_MULTIPLIER,
    Spend,
    compose_epsilon,
    max_steps_within_budget,
    plan_noise_multiplier,
    pure_dp_rdp,
)
from fedaug.privacy.ledger import LedgerEntry, PrivacyLedger, open_ledger_readonly

__all__ = [
    "MAX_NOISE_MULTIPLIER",
    "Spend",
    "compose_epsilon",
    "max_steps_within_budget",
    "plan_noise_multiplier",
    "pure_dp_rdp",
    "LedgerEntry",
    "PrivacyLedger",
    "open_ledger_readonly",
]

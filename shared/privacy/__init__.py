"""Privacy: the secret noise source, the per-site ledger, the budget planner, the accounting
math on a ledger's history, and the second record of what each data set spent."""

from fedaug.privacy.accounting import (
    MAX_NOISE_MULTIPLIER,
    Spend,
    compose_epsilon,
    max_steps_within_budget,
    plan_noise_multiplier,
    pure_dp_rdp,
)
from fedaug.privacy.ledger import LedgerEntry, PrivacyLedger, open_ledger_readonly
from fedaug.privacy.noise import NoiseSource
from fedaug.privacy.planner import BudgetPlanner
from fedaug.privacy.registry import SpendingRegistry, data_fingerprint

__all__ = [
    "MAX_NOISE_MULTIPLIER",
    "BudgetPlanner",
    "LedgerEntry",
    "NoiseSource",
    "PrivacyLedger",
    "Spend",
    "SpendingRegistry",
    "compose_epsilon",
    "data_fingerprint",
    "max_steps_within_budget",
    "open_ledger_readonly",
    "plan_noise_multiplier",
    "pure_dp_rdp",
]

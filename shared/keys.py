"""Every message, record, run-config and node-config key, defined once (kebab-case)."""

from __future__ import annotations

# --- Record names inside a Message's RecordDict -----------------------------------
ARRAYS = "arrays"  # ArrayRecord: generator parameters
CONFIG = "config"  # ConfigRecord: server -> site instructions / site -> server policy
METRICS = "metrics"  # MetricRecord: aggregate metrics only

# --- ConfigRecord keys, server -> site (plus every TrainSettings key, flat) --------
SERVER_ROUND = "server-round"  # injected by Flower's strategies
RUN_ID = "run-id"
NUM_ROUNDS = "num-server-rounds"
POLICY = "policy"  # JSON string of the (global) augmentation policy
WARMUP_NOISE_MULTIPLIER = "warmup-noise-multiplier"
WARMUP_SIZE = "warmup-size"
WARMUP_SPREAD = "warmup-spread"  # > 0: also release the classes' spread

# --- ConfigRecord keys, site -> server ------------------------------------------
SITE = "site"
STATUS = "status"  # one of the STATUS_* values below

# --- Site status values ------------------------------------------------------------
STATUS_TRAINED = "trained"
STATUS_EXHAUSTED = "budget-exhausted"
STATUS_RELEASED = "released"  # warm-start release sent
STATUS_DECLINED = "declined"  # warm-start release declined (budget)

# --- MetricRecord keys, site -> server ------------------------------------------
# Every value is a DP release recorded in the site's ledger, or a post-processing of one
# and of the site's own settings: no loss, no wall time, no exact count ever leaves.
NUM_EXAMPLES = "num-examples"  # the noisy count released once per run
EPSILON = "epsilon"  # composed over the ledger
DELTA = "delta"  # the site's setting
BUDGET = "budget"  # the site's setting
STEPS = "steps"  # from the noisy count and the ledger
NOISE_MULTIPLIER = "noise-multiplier"  # planned from the noisy count and the ledger
SAMPLE_RATE = "sample-rate"  # batch-size / noisy count
#: the exact key set of a training reply's metrics
TRAIN_METRICS = (NUM_EXAMPLES, EPSILON, DELTA, BUDGET, STEPS, NOISE_MULTIPLIER, SAMPLE_RATE)
#: the exact key set of a warm-start reply's metrics
WARMUP_METRICS = (EPSILON, DELTA, BUDGET)

# --- Node config (per site, set by the site itself) ------------------------------
NODE_DATA_PATH = "data-path"
NODE_STATE_DIR = "state-dir"
NODE_SITE_NAME = "site-name"
NODE_EPSILON_BUDGET = "epsilon-budget"
NODE_DELTA = "delta"
NODE_LABELS = "labels"
NODE_SPENDING_REGISTRY = "spending-registry"
NODE_SECURE_NOISE = "secure-noise"
NODE_PARTITION_ID = "partition-id"  # set by Flower's simulation engine
NODE_NUM_PARTITIONS = "num-partitions"  # set by Flower's simulation engine

__all__ = sorted(k for k in dict(globals()) if k.isupper())

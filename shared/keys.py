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

# --- ConfigRecord keys, site -> server ------------------------------------------
SITE = "site"
STATUS = "status"  # "trained" | "budget-exhausted"

# --- MetricRecord keys, site -> server ------------------------------------------
NUM_EXAMPLES = "num-examples"
LOSS = "loss"
EPSILON = "epsilon"
DELTA = "delta"
BUDGET = "budget"
STEPS = "steps"
NOISE_MULTIPLIER = "noise-multiplier"
SAMPLE_RATE = "sample-rate"
TRAIN_SECONDS = "train-seconds"

# --- Node config (per site, set by the site itself) ------------------------------
NODE_DATA_PATH = "data-path"
NODE_STATE_DIR = "state-dir"
NODE_SITE_NAME = "site-name"
NODE_EPSILON_BUDGET = "epsilon-budget"
NODE_DELTA = "delta"
NODE_PARTITION_ID = "partition-id"  # set by Flower's simulation engine
NODE_NUM_PARTITIONS = "num-partitions"  # set by Flower's simulation engine

__all__ = sorted(k for k in dict(globals()) if k.isupper())

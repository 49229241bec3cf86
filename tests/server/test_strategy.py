"""Server pieces with seeded inputs: policy aggregation, the aggregators, reply checks."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedaug import keys
from fedaug.augment import Policy, aggregate_policies
from fedaug.augment.candidates import candidate_policies
from fedaug.server.aggregate import aggregate_arrays
from fedaug.server.replies import check_train_reply


def test_mergeable_policies_are_averaged_by_examples():
    a = Policy.from_json('{"schema_version":1,"modality":"image","ops":[{"op":"rotate","p":0.2,"limit":10.0}],"sampling":null}')
    b = Policy.from_json('{"schema_version":1,"modality":"image","ops":[{"op":"rotate","p":0.8,"limit":20.0}],"sampling":null}')
    merged = aggregate_policies([a, b], [1.0, 3.0])
    rot = merged.to_dict()["ops"][0]
    assert abs(rot["p"] - 0.65) < 1e-9 and abs(rot["limit"] - 17.5) < 1e-9


def test_unmergeable_policies_fall_back_to_a_weighted_vote():
    cands = candidate_policies(Policy.default("image"))
    sampling = next(c for c in cands if c.sampling is not None)
    plain = cands[0]
    chosen = aggregate_policies([plain, sampling, sampling], [100.0, 30.0, 40.0])
    assert chosen.to_json() == plain.to_json()  # 100 examples beat 70
    chosen = aggregate_policies([plain, sampling, sampling], [50.0, 30.0, 40.0])
    assert chosen.to_json() == sampling.to_json()


def _records(values):
    return [ArrayRecord({"w": Array(np.asarray(v, dtype=np.float32))}) for v in values]


@pytest.mark.parametrize(("rule", "expected"), [
    ("mean", [(1 * 1 + 2 * 1 + 30 * 2) / 4, (0 + 0 + 4 * 2) / 4]),
    ("median", [2.0, 0.0]),
    ("trimmed-mean", [5 / 3, 0.0]),  # 5 sites: one trimmed at each end
])
def test_each_aggregator_on_known_values(rule, expected):
    # Prepare: one outlier site (30, 4)
    values = [[1, 0], [2, 0], [30, 4]] if rule == "mean" else [[1, 0], [2, 0], [30, 4],
                                                               [2, 0], [-5, 0]]
    weights = [1.0, 1.0, 2.0] if rule == "mean" else [1.0] * 5

    # Execute
    out = aggregate_arrays(_records(values), weights, rule=rule)["w"].numpy()

    # Assert
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def _reply(*, metrics=None, arrays=None, policy=None, status=keys.STATUS_TRAINED):
    m = {k: 1.0 for k in keys.TRAIN_METRICS} if metrics is None else metrics
    return RecordDict({
        keys.ARRAYS: arrays if arrays is not None else _records([[0.5, 0.5]])[0],
        keys.METRICS: MetricRecord(m),
        keys.CONFIG: ConfigRecord({keys.SITE: "s", keys.STATUS: status,
                                   keys.POLICY: policy or Policy.default("image").to_json()}),
    })


@pytest.mark.parametrize(("reply", "reason"), [
    (_reply(), None),
    (_reply(metrics={**{k: 1.0 for k in keys.TRAIN_METRICS}, "loss": 0.3}), "unexpected \\['loss'\\]"),
    (_reply(metrics={k: 1.0 for k in keys.TRAIN_METRICS if k != keys.EPSILON}), "missing \\['epsilon'\\]"),
    (_reply(metrics={**{k: 1.0 for k in keys.TRAIN_METRICS}, keys.EPSILON: float("nan")}), "not finite"),
    (_reply(policy="{bad json"), "malformed policy"),
    (_reply(metrics={**{k: 1.0 for k in keys.TRAIN_METRICS}, keys.NUM_EXAMPLES: 0.0}), "num-examples must be > 0"),
    (_reply(arrays=_records([[np.nan, 0]])[0]), "NaN or Inf"),
    (_reply(arrays=_records([[1, 2, 3]])[0]), "has shape"),
    (_reply(arrays=ArrayRecord({"v": Array(np.zeros(2, dtype=np.float32))})), "names differ"),
    (_reply(arrays=_records([[100.0, 0]])[0]), "exceeds max-update-norm"),
])
def test_reply_checks_name_the_reason(reply, reason):
    # Execute
    problem, policy = check_train_reply(reply, _records([[0.0, 0.0]])[0], max_update_norm=10.0)

    # Assert
    if reason is None:
        assert problem is None and policy is not None
    else:
        assert problem is not None and __import__("re").search(reason, problem), problem


def test_a_second_superlink_on_one_state_folder_is_refused(tmp_path):
    # Prepare
    from fedaug.errors import ConfigError
    from fedaug.server.superlink import database_lock

    # Execute / Assert: the lock is held for the first; the second is refused; then free
    with database_lock(tmp_path):
        with pytest.raises(ConfigError, match="already uses the state folder"):
            with database_lock(tmp_path):
                pass
    with database_lock(tmp_path):
        pass


def test_class_prior_floors_noised_counts_and_normalises():
    from fedaug.server.warmup import class_prior

    # a noised count can be tiny or negative: it counts as min_count, never below zero
    assert class_prior(np.array([-30.0, 2.0, 90.0])) == pytest.approx([0.05, 0.05, 0.9])
    assert class_prior(np.array([300.0, 700.0])) == pytest.approx([0.3, 0.7])

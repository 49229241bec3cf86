"""Server pieces with seeded inputs: policy aggregation, the aggregators, reply checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
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


def test_server_momentum_moves_the_global_model_by_the_updates_momentum_and_resumes():
    from fedaug.server.strategy import FedAugStrategy

    def step(strategy, current, aggregate):
        strategy._current = _records([current])[0]
        return strategy._apply_momentum(_records([aggregate])[0])["w"].numpy()

    # Prepare: two rounds whose sites' mean moves the model by +1, then by +2
    strategy = FedAugStrategy(policy=Policy.default("image"), server_momentum=0.5)

    # Execute / Assert: m = 1, then m = 0.5 * 1 + 2 = 2.5 (plain FedAvg would give 3)
    np.testing.assert_allclose(step(strategy, [0.0], [1.0]), [1.0])
    np.testing.assert_allclose(step(strategy, [1.0], [3.0]), [3.5])
    # a restarted server continues with the same momentum
    resumed = FedAugStrategy(policy=Policy.default("image"), server_momentum=0.5)
    resumed.resume_from(strategy.checkpoint())
    np.testing.assert_allclose(step(resumed, [3.5], [3.5]), [3.5 + 1.25])
    # without momentum the aggregate is the model
    plain = FedAugStrategy(policy=Policy.default("image"))
    np.testing.assert_allclose(step(plain, [1.0], [3.0]), [3.0])
    with pytest.raises(ValueError, match="server_momentum"):
        FedAugStrategy(policy=Policy.default("image"), server_momentum=1.0)


def test_class_prior_floors_noised_counts_and_normalises():
    from fedaug.server.warmup import class_prior

    # a noised count can be tiny or negative: it counts as min_count, never below zero
    assert class_prior(np.array([-30.0, 2.0, 90.0])) == pytest.approx([0.05, 0.05, 0.9])
    assert class_prior(np.array([300.0, 700.0])) == pytest.approx([0.3, 0.7])


def test_central_images_are_denoised_by_their_stated_noise_and_a_bad_release_is_ignored(
        monkeypatch, caplog):
    """The server sums the sites' releases, blurs a noisy central image by the width Stein's
    risk estimate picks for its noise, leaves one whose noise is below the pretraining's
    jitter as released, and drops a release that does not state its noise."""
    from types import SimpleNamespace

    from fedaug.server.warmup import collect_central_images

    side, k, per_class = 16, 2, np.array([400.0, 25.0])  # class 1: few records, much noise
    yy, xx = np.mgrid[0:side, 0:side]
    blob = np.tanh(((xx - 8) ** 2 + (yy - 7) ** 2) / 30.0 - 1)  # a smooth image in [-1, 1]
    true = np.stack([blob, -blob]).reshape(k, -1)
    std, rng = 40.0, np.random.default_rng(0)

    def release(node, *, noise=True):
        arrays = {"class-sums": true * per_class[:, None] / 2
                  + rng.normal(0, std, (k, side * side)),
                  "class-counts": per_class / 2 + rng.normal(0, 2.0, k)}
        if noise:
            arrays["noise-std"] = np.array([std])
        content = RecordDict({keys.ARRAYS: ArrayRecord(
            {n: Array(np.asarray(v, dtype=np.float32)) for n, v in arrays.items()})})
        return SimpleNamespace(has_error=lambda: False, content=content,
                               metadata=SimpleNamespace(src_node_id=node))

    replies = [release(1), release(2), release(3, noise=False)]
    # outside a Flower run a Message cannot be built: the requests are not looked at here
    monkeypatch.setattr("fedaug.server.warmup.Message", lambda **kw: SimpleNamespace(**kw))
    grid = SimpleNamespace(get_node_ids=lambda: [1, 2, 3],
                           send_and_receive=lambda msgs, timeout: replies)
    with caplog.at_level("WARNING", logger="fedaug.server"):
        central = collect_central_images(grid, ConfigRecord({}), num_classes=k,
                                         image_shape=(1, side, side), timeout=1.0)
    means, counts = central.means, central.counts
    assert central.spread is None  # not asked for
    assert "ignoring node 3's release: it lacks 'noise-std'" in caplog.text
    # the third site's sums are not in: the counts are two sites' worth
    assert counts == pytest.approx(per_class, abs=10)
    raw = (sum(r.content[keys.ARRAYS]["class-sums"].numpy() for r in replies[:2])
           / counts[:, None]).reshape(k, 1, side, side)
    err_raw = np.sqrt(((raw - true.reshape(raw.shape)) ** 2).mean(axis=(1, 2, 3)))
    err = np.sqrt(((means - true.reshape(raw.shape)) ** 2).mean(axis=(1, 2, 3)))
    assert err_raw[1] > 0.3 and err[1] < err_raw[1] / 3  # the noisy class: much closer
    # the quiet class (noise 0.14, below the pretraining's own jitter) is left as released
    np.testing.assert_allclose(means[0], np.clip(raw[0], -1, 1), atol=1e-6)


def test_the_spread_is_summed_over_the_sites_that_released_it(monkeypatch, caplog):
    """Asked for the spread, the server sums the sites' second moments (a site without
    them still gives its sums), normalises by those sites' counts and finds the planted
    component; a malformed spread release is dropped with a warning."""
    from types import SimpleNamespace

    from fedaug.generator.spread import noise_second_moments
    from fedaug.privacy.noise import NoiseSource
    from fedaug.server.warmup import collect_central_images

    k, d, n = 2, 49, 1500.0
    rows, cols = np.triu_indices(d)
    direction = np.zeros(d)
    direction[:7] = 1 / np.sqrt(7)
    cov = [0.4 * np.outer(direction, direction), np.zeros((d, d))]

    def release(node, *, spread, bad=False):
        arrays = {"class-sums": np.zeros((k, 49)), "class-counts": np.array([n, n]),
                  "noise-std": np.array([1.0])}
        if spread:
            m2 = torch.from_numpy(np.stack([n * c[rows, cols] for c in cov]))
            m2, std = noise_second_moments(m2, noise_multiplier=2.0,
                                           noise=NoiseSource.for_tests(node))
            arrays["class-spread"] = m2.numpy()[:, :10] if bad else m2.numpy()
            arrays["spread-noise-std"] = np.array([std])
        content = RecordDict({keys.ARRAYS: ArrayRecord(
            {name: Array(np.asarray(v, dtype=np.float32)) for name, v in arrays.items()})})
        return SimpleNamespace(has_error=lambda: False, content=content,
                               metadata=SimpleNamespace(src_node_id=node))

    replies = [release(1, spread=True), release(2, spread=True), release(3, spread=False),
               release(4, spread=True, bad=True)]
    monkeypatch.setattr("fedaug.server.warmup.Message", lambda **kw: SimpleNamespace(**kw))
    grid = SimpleNamespace(get_node_ids=lambda: [1, 2, 3, 4],
                           send_and_receive=lambda msgs, timeout: replies)
    with caplog.at_level("INFO", logger="fedaug.server"):
        central = collect_central_images(grid, ConfigRecord({keys.WARMUP_SPREAD: 8}),
                                         num_classes=k, image_shape=(1, 7, 7), timeout=1.0)
    assert "ignoring a malformed spread release from node 4" in caplog.text
    assert central.counts == pytest.approx([4 * n, 4 * n])  # every site's sums are in
    (u0, s0), (_, s1) = central.spread
    assert len(s0) == 1 and len(s1) == 0
    assert abs(float(u0[:, 0] @ direction)) > 0.95
    assert s0[0] == pytest.approx(np.sqrt(0.4), rel=0.15)  # normalised by 2 sites' counts


def test_stein_risk_picks_a_wider_blur_for_more_noise():
    from fedaug.server.warmup import denoise_central_images

    yy, xx = np.mgrid[0:28, 0:28]
    image = np.tanh(((xx - 14) ** 2 + (yy - 12) ** 2) / 80.0 - 1)[None, None]
    rng = np.random.default_rng(1)
    widths = []
    for sd in (0.01, 0.1, 0.3, 0.8):
        noisy = image + rng.normal(0, sd, image.shape)
        out, (width,) = denoise_central_images(noisy, np.array([sd]))
        widths.append(width)
        assert ((out - image) ** 2).mean() < ((noisy - image) ** 2).mean()
    assert widths == sorted(widths) and widths[0] < widths[-1]
    # noise at or below keep_below stays in
    noisy = image + rng.normal(0, 0.3, image.shape)
    out, (width,) = denoise_central_images(noisy, np.array([0.3]), keep_below=0.3)
    assert width == 0.0 and np.array_equal(out, noisy)
    # no noise stated: nothing to remove, the image stays as it is
    out, (width,) = denoise_central_images(image, np.array([0.0]))
    assert width == 0.0 and np.array_equal(out, image)

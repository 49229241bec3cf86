"""The guarantee against the server: secret randomness, only DP releases leave a site,
central DP with the right sensitivity, spending that survives a wiped state folder, a
site's own budget, and a model card that names every site that spent."""

from __future__ import annotations

import itertools
import json
import shutil

import numpy as np
import pytest
import torch
from flwr.app import Message

from conftest import TINY
from fedaug import keys
from fedaug.client.site import SiteContext, open_ledger, resolve_site
from fedaug.config import RunConfig
from fedaug.data import load_digits_builtin
from fedaug.errors import ConfigError, LedgerError
from fedaug.generator import GeneratorConfig, build_train_scheduler, build_unet, train_dp
from fedaug.generator.train import SecretPoissonSampler
from fedaug.privacy import NoiseSource, PrivacyLedger
from fedaug.simulations.run import simulate


def _run(tmp_path, **extra) -> RunConfig:
    return RunConfig.from_mapping({**TINY, "out-dir": str(tmp_path / "out"),
                                   "num-server-rounds": 1, **extra}, source="test")


def _masks(noise: NoiseSource, n: int = 200, steps: int = 5) -> list[list[int]]:
    return list(SecretPoissonSampler(num_samples=n, sample_rate=0.1, steps=steps, noise=noise))


# -- 1. the mechanism's randomness is secret --------------------------------------------
def test_two_fresh_sources_draw_different_batches_and_noise():
    # Prepare / Execute
    a, b = NoiseSource(), NoiseSource()
    c, d = NoiseSource(secure=False), NoiseSource(secure=False)

    # Assert
    assert _masks(a) != _masks(b)
    assert _masks(c) != _masks(d)
    assert not torch.equal(NoiseSource().normal(50, std=1.0), NoiseSource().normal(50, std=1.0))


def test_tests_get_reproducibility_only_by_injecting_a_source():
    # Execute / Assert
    assert _masks(NoiseSource.for_tests(3)) == _masks(NoiseSource.for_tests(3))
    assert torch.equal(NoiseSource.for_tests(3).normal(9, std=2.0),
                       NoiseSource.for_tests(3).normal(9, std=2.0))


@pytest.mark.parametrize("secure", [True, False])
def test_gaussian_noise_has_the_stated_distribution(secure):
    # Execute
    z = NoiseSource(secure=secure).normal(200_000, std=3.0, dtype=torch.float64).numpy()

    # Assert: mean 0, std 3, normal tails (5 sigma of the estimators)
    assert abs(z.mean()) < 5 * 3.0 / np.sqrt(len(z))
    assert z.std() == pytest.approx(3.0, rel=0.01)
    assert np.mean(np.abs(z) > 2 * 3.0) == pytest.approx(0.0455, abs=0.003)


def test_same_run_seed_twice_gives_different_dp_sgd_steps():
    # Prepare: the same model, data and settings, twice
    digits = load_digits_builtin(split="train")
    config = GeneratorConfig(image_size=8, channels=1, num_classes=10, block_out_channels=(8, 16))
    x = torch.from_numpy(digits.images[:64]).permute(0, 3, 1, 2).float() / 127.5 - 1
    y = torch.from_numpy(digits.labels[:64]).long()
    observed = []
    for _ in range(2):
        torch.manual_seed(0)  # the public run seed: model initialisation only
        unet = build_unet(config)
        steps: list[torch.Tensor] = []
        train_dp(unet, build_train_scheduler(config), x, y, steps=2, sample_rate=0.25,
                 noise_multiplier=0.0, max_grad_norm=1.0, learning_rate=1e-3,
                 expected_batch_size=16, noise=NoiseSource(), noise_multiplicity=2,
                 observe=lambda g, out=steps: out.append(torch.cat([t.flatten() for t in g])))
        observed.append(steps)

    # Assert: without any Gaussian noise, the clipped sums still differ (batches, views,
    # diffusion noise and timesteps are secret draws, not functions of the run seed)
    assert not torch.allclose(observed[0][0], observed[1][0])


def test_two_simulations_with_the_same_seed_send_different_parameters(tmp_path):
    # Prepare
    sent = []
    for i in range(2):
        captured: list[Message] = []
        simulate(_run(tmp_path / str(i), **{"warmup-noise-multiplier": 0.0}), num_sites=2,
                 capture=captured, progress=False, audit=False)
        sent.append({m.metadata.src_node_id: m.content[keys.ARRAYS].to_torch_state_dict()
                     for m in captured if not m.has_error() and keys.ARRAYS in m.content})

    # Execute / Assert
    for node in sent[0]:
        a, b = sent[0][node], sent[1][node]
        assert any(not torch.equal(a[k], b[k]) for k in a)


# -- 2. and 3. only DP releases leave a site -------------------------------------------
def test_every_reply_value_is_a_ledger_release_or_a_setting(tmp_path):
    # Prepare
    run = _run(tmp_path, **{"num-server-rounds": 2})
    captured: list[Message] = []
    digits = load_digits_builtin(split="train")

    # Execute
    simulate(run, num_sites=2, capture=captured, progress=False, audit=False)

    # Assert
    train = [m for m in captured if keys.ARRAYS in m.content and
             keys.POLICY in m.content[keys.CONFIG]]
    warm = [m for m in captured if m not in train]
    assert len(train) == 4 and len(warm) == 2
    for m in warm:
        assert set(m.content[keys.METRICS].keys()) == set(keys.WARMUP_METRICS)
    for m in train:
        metrics = m.content[keys.METRICS]
        assert set(metrics.keys()) == set(keys.TRAIN_METRICS)
        site = m.content[keys.CONFIG][keys.SITE]
        ledger = PrivacyLedger(tmp_path / "out" / "sites" / site, site=site, delta=run.delta)
        count = [e for e in ledger.entries if e.release == "count"]
        assert len(count) == 1  # once per run
        assert metrics[keys.NUM_EXAMPLES] == max(count[0].value, 1.0)
        assert metrics[keys.NUM_EXAMPLES] != float(np.round(metrics[keys.NUM_EXAMPLES]))
        sgd = [e for e in ledger.entries if e.mechanism == "dp-sgd"]
        assert any((e.steps, e.noise_multiplier, e.sample_rate)
                   == (metrics[keys.STEPS], metrics[keys.NOISE_MULTIPLIER],
                       metrics[keys.SAMPLE_RATE]) for e in sgd)
        assert metrics[keys.BUDGET] == run.epsilon and metrics[keys.DELTA] == run.delta
    final = [m.content[keys.METRICS][keys.EPSILON] for m in train[-2:]]
    for m, eps in zip(train[-2:], final, strict=True):
        site = m.content[keys.CONFIG][keys.SITE]
        assert eps == pytest.approx(PrivacyLedger(tmp_path / "out" / "sites" / site, site=site,
                                                  delta=run.delta).epsilon())
    assert all(len(digits.images) not in (m.content[keys.METRICS][keys.NUM_EXAMPLES],)
               for m in train)


# -- 4. central DP: the noise matches the sensitivity ------------------------------------
def test_central_dp_mean_moves_at_most_std_over_sigma_between_neighbours():
    # Prepare: five site updates, some far above the clip norm
    from flwr.app import Array, ArrayRecord

    from fedaug.server.central_dp import central_dp_mean

    rng = np.random.default_rng(0)
    ref = ArrayRecord({"w": Array(np.zeros(6, dtype=np.float32))})
    updates = [ArrayRecord({"w": Array((rng.normal(size=6) * s).astype(np.float32))})
               for s in (0.1, 0.5, 3.0, 10.0, 0.05)]
    clip, denominator, sigma = 1.0, 3.0, 1.7
    std = sigma * clip / denominator

    def mean(subset):
        out = central_dp_mean(list(subset), ref, clip_norm=clip, noise_multiplier=0.0,
                              denominator=denominator, noise=NoiseSource())
        return out["w"].numpy().astype(np.float64)

    # Execute: every set and every set with one site removed (add/remove one site)
    worst = 0.0
    for size in range(1, len(updates) + 1):
        for subset in itertools.combinations(updates, size):
            for i in range(size):
                smaller = subset[:i] + subset[i + 1:]
                worst = max(worst, float(np.linalg.norm(mean(subset) - mean(smaller))))

    # Assert: the sensitivity the noise was sized for (std / sigma = C / W) holds
    assert worst <= std / sigma + 1e-6
    assert worst > 0.9 * std / sigma  # and is reached: the bound is not loose


def test_central_dp_refuses_the_warm_start():
    # Execute / Assert
    with pytest.raises(ConfigError, match="warmup-noise-multiplier"):
        RunConfig.from_mapping({"central-noise-multiplier": 1.0}, source="test")


# -- 5. spending survives a wiped state folder ------------------------------------------
def _site(tmp_path, name="site-a") -> SiteContext:
    return SiteContext(name=name, state_dir=tmp_path / "state", data="digits", partition_id=None,
                       num_partitions=None, epsilon_budget=10.0, delta=1e-5,
                       registry_dir=tmp_path / "registry")


def _spend(site, data, n=1):
    ledger, _ = open_ledger(site, data)
    for i in range(n):
        ledger.append(mechanism="gaussian", noise_multiplier=2.0, sample_rate=1.0, steps=1,
                      run="r", round=i)
    return ledger


@pytest.mark.parametrize("attack", ["delete-both", "restore-older", "recompute-hashes"])
def test_a_wiped_restored_or_rewritten_ledger_is_refused(tmp_path, attack):
    # Prepare
    site = _site(tmp_path)
    data = load_digits_builtin(split="train")
    _spend(site, data, 1)
    older = tmp_path / "older"
    shutil.copytree(site.state_dir, older)
    _spend(site, data, 2)

    # Execute
    if attack == "delete-both":
        shutil.rmtree(site.state_dir)
    elif attack == "restore-older":
        shutil.rmtree(site.state_dir)
        shutil.copytree(older, site.state_dir)
    else:  # drop the last entry and recompute every hash and the head, as an editor would
        from fedaug.privacy import ledger as ledger_module

        path = site.state_dir / ledger_module.LEDGER_FILE
        raw = json.loads(path.read_text())
        raw["entries"] = raw["entries"][:2]
        prev = ledger_module._GENESIS
        for e in raw["entries"]:
            body = {k: v for k, v in e.items() if k not in ("prev", "hash")}
            e["prev"], e["hash"] = prev, ledger_module._digest(prev, body)
            prev = e["hash"]
        path.write_text(json.dumps(raw))
        (site.state_dir / ledger_module.HEAD_FILE).write_text(
            json.dumps({"count": 2, "last-hash": prev}))
        assert len(PrivacyLedger(site.state_dir, site=site.name, delta=1e-5).entries) == 2

    # Assert
    with pytest.raises(LedgerError, match="already spent 3"):
        open_ledger(site, data)


def test_the_registry_keys_by_the_data_not_the_folder(tmp_path):
    # Prepare: other data in a wiped folder is a new data set
    site = _site(tmp_path)
    data = load_digits_builtin(split="train")
    _spend(site, data, 1)
    shutil.rmtree(site.state_dir)

    # Execute / Assert
    ledger, _ = open_ledger(site, data.subset(np.arange(100)))
    assert ledger.entries == ()


# -- 6. a deployed site states its own budget -------------------------------------------
@pytest.mark.parametrize(("node", "message"), [
    ({"data-path": "d.npz", "state-dir": "s", "delta": 1e-5}, "lacks epsilon-budget"),
    ({"data-path": "d.npz", "state-dir": "s", "epsilon-budget": 8.0}, "lacks delta"),
    ({"data-path": "d.npz", "state-dir": "s", "epsilon-budgt": 1.0, "delta": 1e-5},
     "did you mean 'epsilon-budget'"),
    ({"data-path": "d.npz", "state-dir": "s", "epsilon-budget": "abc", "delta": 1e-5},
     "epsilon-budget: must be a number, got 'abc'"),
    ({"data-path": "d.npz", "state-dir": "s", "epsilon-budget": 1.0, "delta": 0.5},
     r"delta: must be <= 0.1"),
])
def test_a_deployed_site_without_a_valid_budget_is_refused(tmp_path, node, message):
    # Execute / Assert: the server's run config never fills a site's budget in
    run = RunConfig.from_mapping({"epsilon": 1000.0, "delta": 0.1}, source="server")
    with pytest.raises(ConfigError, match=message):
        resolve_site(node, run)


def test_a_delta_not_below_one_over_the_count_is_refused(tmp_path):
    # Prepare: 200 examples and delta 0.05 > 1/200. The check reads the noisy count (std 6.3
    # at epsilon 10, from the secret source), refused at a count of 20 or more: 180 below the
    # true count, about 29 standard deviations, so the refusal does not depend on the draw
    from fedaug.client.count import released_count

    site = SiteContext(name="tiny", state_dir=tmp_path / "s", data="digits", partition_id=None,
                       num_partitions=None, epsilon_budget=10.0, delta=0.05,
                       registry_dir=tmp_path / "r")
    data = load_digits_builtin(split="train").subset(np.arange(200))
    ledger, planner = open_ledger(site, data)

    # Execute / Assert
    with pytest.raises(ConfigError, match="delta must be below 1 / "):
        released_count(site, ledger, planner, num_examples=200, run_id="r", server_round=1)


# -- 7. the card names every site that spent --------------------------------------------
def test_the_model_card_lists_a_warm_start_only_site(tmp_path, monkeypatch):
    # Prepare: site-1 releases its warm-start sums, then fails every training round
    from fedaug.client import app as client_app

    real = client_app.run_round

    def failing(**kwargs):
        if kwargs["site"].name == "site-1":
            raise RuntimeError("this site's training crashes")
        return real(**kwargs)

    monkeypatch.setattr(client_app, "run_round", failing)
    run = _run(tmp_path, **{"min-sites": 1})

    # Execute
    simulate(run, num_sites=2, progress=False, audit=False)

    # Assert
    card = json.loads((tmp_path / "out" / "global" / "model_card.json").read_text())
    sites = {s["site"]: s for s in card["sites"]}
    assert set(sites) == {"site-0", "site-1"}
    assert sites["site-1"]["status"] == "warm-start only"
    assert sites["site-1"]["epsilon"] > 0
    ledger = PrivacyLedger(tmp_path / "out" / "sites" / "site-1", site="site-1", delta=run.delta)
    assert sites["site-1"]["epsilon"] == pytest.approx(ledger.epsilon())


# -- an independent accountant agrees with every ledger ---------------------------------
def test_an_independent_accountant_never_exceeds_the_ledgers_epsilon(tmp_path):
    # Prepare
    dp_accounting = pytest.importorskip("dp_accounting")
    from dp_accounting import pld, rdp

    run = _run(tmp_path, **{"num-server-rounds": 3, "batch-size": 48, "local-epochs": 1.0})
    simulate(run, num_sites=2, progress=False, audit=False)

    for site in ("site-0", "site-1"):
        ledger = PrivacyLedger(tmp_path / "out" / "sites" / site, site=site, delta=run.delta)
        assert {e.release for e in ledger.entries} == {"warm-start", "count", "dp-sgd"}
        events = [dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(e.sample_rate,
                                                dp_accounting.GaussianDpEvent(e.noise_multiplier))
            if e.sample_rate < 1 else dp_accounting.GaussianDpEvent(e.noise_multiplier), e.steps)
            for e in ledger.entries]

        # Execute
        ours = ledger.epsilon()
        independent = {}
        for name, accountant in (("rdp", rdp.RdpAccountant()),
                                 ("pld", pld.PLDAccountant(value_discretization_interval=1e-3))):
            accountant.compose(dp_accounting.ComposedDpEvent(events))
            independent[name] = accountant.get_epsilon(run.delta)

        # Assert: never above ours (no under-count), and not far below (not loose)
        assert independent["rdp"] <= ours * (1 + 1e-3)
        assert independent["pld"] <= ours * (1 + 1e-3)
        assert independent["rdp"] >= 0.9 * ours
        assert independent["pld"] >= 0.6 * ours


def test_a_deployed_sites_record_is_keyed_by_its_files_whatever_size_the_server_asks(tmp_path):
    # Prepare: a deployed site with an .npz file spends at one image size
    from fedaug.client.site import load_site_data

    digits = load_digits_builtin(split="train")
    path = tmp_path / "site.npz"
    np.savez(path, train_images=digits.images[:200, ..., 0],
             train_labels=digits.labels[:200].reshape(-1, 1).astype(np.uint8))
    site = SiteContext(name="h", state_dir=tmp_path / "state", data=str(path), partition_id=None,
                       num_partitions=None, epsilon_budget=10.0, delta=1e-5,
                       registry_dir=tmp_path / "registry")
    run8 = RunConfig.from_mapping({"image-size": 8}, source="server")
    ledger, _ = open_ledger(site, load_site_data(site, run8))
    ledger.append(mechanism="gaussian", noise_multiplier=2.0, sample_rate=1.0, steps=1,
                  run="r", round=0)
    shutil.rmtree(site.state_dir)

    # Execute / Assert: the server now asks for 16x16 images; the wiped folder is still caught
    run16 = RunConfig.from_mapping({"image-size": 16}, source="server")
    with pytest.raises(LedgerError, match="already spent 1"):
        open_ledger(site, load_site_data(site, run16))

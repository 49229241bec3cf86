"""Privacy math known answers, the ledger's restart and tamper behaviour, budget planning."""

from __future__ import annotations

import json

import pytest
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

from fedaug.errors import LedgerError
from fedaug.privacy import (
    PrivacyLedger,
    compose_epsilon,
    max_steps_within_budget,
    plan_noise_multiplier,
)
from fedaug.privacy.ledger import HEAD_FILE, LEDGER_FILE

INTEGER_ORDERS = [*range(2, 64), 128, 256, 512]


def test_compose_matches_opacus_known_answer():
    # Opacus's own test pins sigma 1.5, q 0.04, 2250 steps, delta 1e-5 -> 7.32911117143 over
    # its default orders, fractional ones included; ours takes integer orders only (exact on
    # both libraries), a hair more conservative
    eps = compose_epsilon([(1.5, 0.04, 2250)], delta=1e-5)
    acc = RDPAccountant()
    acc.history = [(1.5, 0.04, 2250)]
    assert eps == pytest.approx(acc.get_epsilon(delta=1e-5, alphas=INTEGER_ORDERS), abs=1e-9)
    assert 7.32911117143 <= eps <= 7.32911117143 * 1.001


def test_three_rounds_compose_to_one_accountant_not_the_last_round():
    # Prepare: three rounds of 750 steps (the Flower Opacus example's shape)
    rounds = [(1.5, 0.04, 750)] * 3
    one_round = compose_epsilon(rounds[:1], delta=1e-5)
    # Execute
    total = compose_epsilon(rounds, delta=1e-5)
    # Assert: equals one uninterrupted accountant over all 2250 steps, not one round's ~4.0
    acc = RDPAccountant()
    for _ in range(2250):
        acc.step(noise_multiplier=1.5, sample_rate=0.04)
    assert total == pytest.approx(acc.get_epsilon(delta=1e-5, alphas=INTEGER_ORDERS), rel=1e-9)
    assert one_round == pytest.approx(4.0, abs=0.05)
    assert total > one_round * 1.5


def test_plan_matches_opacus_get_noise_multiplier_from_scratch():
    sigma = plan_noise_multiplier([], delta=1e-5, budget=8.0, sample_rate=0.04, steps=2000)
    ref = get_noise_multiplier(target_epsilon=8, target_delta=1e-5, sample_rate=0.04, steps=2000)
    assert ref == pytest.approx(1.3562, abs=1e-4)  # Opacus's pinned value
    assert sigma == pytest.approx(ref, rel=0.01)
    assert compose_epsilon([(sigma, 0.04, 2000)], delta=1e-5) <= 8.0


def test_plan_counts_what_was_already_spent():
    spent = [(2.0, 0.1, 100)]
    fresh = plan_noise_multiplier([], delta=1e-5, budget=8.0, sample_rate=0.1, steps=200)
    restored = plan_noise_multiplier(spent, delta=1e-5, budget=8.0, sample_rate=0.1, steps=200)
    assert restored > fresh
    assert compose_epsilon([*spent, (restored, 0.1, 200)], delta=1e-5) <= 8.0


def test_plan_returns_none_when_budget_is_gone():
    spent = [(0.5, 1.0, 100)]  # a huge spend
    assert compose_epsilon(spent, delta=1e-5) > 50
    assert plan_noise_multiplier(spent, delta=1e-5, budget=1.0, sample_rate=0.1, steps=10) is None


def test_max_steps_cuts_to_budget():
    n = max_steps_within_budget([], delta=1e-5, budget=1.0, noise_multiplier=3.0,
                                sample_rate=0.1, max_steps=10_000)
    assert 0 < n < 10_000
    assert compose_epsilon([(3.0, 0.1, n)], delta=1e-5) <= 1.0
    assert compose_epsilon([(3.0, 0.1, n + 1)], delta=1e-5) > 1.0


def _ledger_with_two_entries(tmp_path):
    ledger = PrivacyLedger(tmp_path, site="site-a", delta=1e-5)
    ledger.append(mechanism="dp-sgd", noise_multiplier=1.5, sample_rate=0.04, steps=750,
                  run="r1", round=1)
    ledger.append(mechanism="dp-sgd", noise_multiplier=1.5, sample_rate=0.04, steps=750,
                  run="r1", round=2)
    return ledger


def test_ledger_restart_continues_epsilon(tmp_path):
    # Prepare: a site spends two rounds, then "restarts" (a new object from the folder)
    first = _ledger_with_two_entries(tmp_path)
    # Execute
    restarted = PrivacyLedger(tmp_path, site="site-a", delta=1e-5)
    restarted.append(mechanism="dp-sgd", noise_multiplier=1.5, sample_rate=0.04, steps=750,
                     run="r2", round=1)
    # Assert: 3 x 750 steps across two runs compose like 2250 uninterrupted steps
    assert len(restarted.entries) == 3
    assert first.epsilon() < restarted.epsilon()
    assert restarted.epsilon() == pytest.approx(compose_epsilon([(1.5, 0.04, 2250)], delta=1e-5), abs=1e-9)


def test_ledger_refuses_edited_entry(tmp_path):
    _ledger_with_two_entries(tmp_path)
    path = tmp_path / LEDGER_FILE
    data = json.loads(path.read_text())
    data["entries"][0]["steps"] = 1  # someone lowers the recorded spending
    path.write_text(json.dumps(data))
    with pytest.raises(LedgerError, match="corrupted or was edited at entry 0"):
        PrivacyLedger(tmp_path, site="site-a", delta=1e-5)


def test_ledger_refuses_truncated_file(tmp_path):
    _ledger_with_two_entries(tmp_path)
    path = tmp_path / LEDGER_FILE
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(LedgerError, match="cannot be read"):
        PrivacyLedger(tmp_path, site="site-a", delta=1e-5)


def test_ledger_refuses_dropped_entries(tmp_path):
    _ledger_with_two_entries(tmp_path)
    path = tmp_path / LEDGER_FILE
    data = json.loads(path.read_text())
    data["entries"] = data["entries"][:1]  # a consistent chain, one entry shorter
    path.write_text(json.dumps(data))
    with pytest.raises(LedgerError, match="truncated or replaced"):
        PrivacyLedger(tmp_path, site="site-a", delta=1e-5)


def test_ledger_refuses_deleted_file_never_resets(tmp_path):
    _ledger_with_two_entries(tmp_path)
    (tmp_path / LEDGER_FILE).unlink()
    assert (tmp_path / HEAD_FILE).exists()
    with pytest.raises(LedgerError, match="missing"):
        PrivacyLedger(tmp_path, site="site-a", delta=1e-5)


def test_ledger_refuses_other_site_and_other_delta(tmp_path):
    _ledger_with_two_entries(tmp_path)
    with pytest.raises(LedgerError, match="belongs to site"):
        PrivacyLedger(tmp_path, site="site-b", delta=1e-5)
    with pytest.raises(LedgerError, match="delta"):
        PrivacyLedger(tmp_path, site="site-a", delta=1e-6)


def test_ledger_summary_json_shape(tmp_path):
    ledger = _ledger_with_two_entries(tmp_path)
    s = ledger.summary(budget=10.0)
    assert {"site", "mechanism", "delta", "epsilon", "budget", "entries"} <= set(s)
    assert [e["round"] for e in s["entries"]] == [1, 2]
    assert s["entries"][-1]["epsilon"] == pytest.approx(s["epsilon"])
    assert {"run", "round", "noise-multiplier", "sample-rate", "steps"} <= set(s["entries"][0])


def test_pure_dp_releases_compose_with_dp_sgd(tmp_path):
    # Prepare: one DP-SGD round and one exponential-mechanism policy choice at eps 0.5
    ledger = PrivacyLedger(tmp_path, site="s", delta=1e-5)
    ledger.append(mechanism="dp-sgd", noise_multiplier=1.5, sample_rate=0.04, steps=750,
                  run="r", round=1)
    only_sgd = ledger.epsilon()
    ledger.append(mechanism="exponential", epsilon=0.5, run="r", round=1)
    # Execute: a restart reads both kinds back
    again = PrivacyLedger(tmp_path, site="s", delta=1e-5)
    # Assert: the choice costs something, never more than its own epsilon
    assert only_sgd < again.epsilon() <= only_sgd + 0.5 + 1e-9
    assert again.pure_epsilons() == [0.5]
    assert compose_epsilon([], delta=1e-5, pure=[0.5]) <= 0.5


def test_privacy_show_cli_json_and_table(tmp_path, capsys):
    from fedaug.cli import main

    _ledger_with_two_entries(tmp_path)
    assert main(["privacy", "show", "--state-dir", str(tmp_path), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["site"] == "site-a" and shown["delta"] == 1e-5
    assert [e["steps"] for e in shown["entries"]] == [750, 750]
    assert shown["epsilon"] == pytest.approx(compose_epsilon([(1.5, 0.04, 1500)], delta=1e-5))
    assert main(["privacy", "show", "--state-dir", str(tmp_path)]) == 0
    assert "cum. eps" in capsys.readouterr().out


def test_privacy_show_cli_refuses_a_corrupted_ledger(tmp_path, capsys):
    from fedaug.cli import main

    _ledger_with_two_entries(tmp_path)
    (tmp_path / LEDGER_FILE).write_text("{not json")
    assert main(["privacy", "show", "--state-dir", str(tmp_path)]) == 2
    assert "cannot be read" in capsys.readouterr().err


def test_local_epochs_plan_many_subsampled_steps_on_a_large_site_and_few_on_a_small(tmp_path):
    # Prepare: batch 100 with one local epoch; a 1,000-record site (q = 0.1) and a 60-record
    # one (full batches, q = 1), 5 rounds each
    from fedaug.client.site import SiteContext
    from fedaug.client.train import plan_round
    from fedaug.config import TrainSettings
    from fedaug.privacy import BudgetPlanner

    settings = TrainSettings(batch_size=100, local_epochs=1.0)
    plans = {}
    for n in (1000, 60):
        site = SiteContext(name=f"site-{n}", state_dir=tmp_path / str(n), data="digits",
                           partition_id=0, num_partitions=1, epsilon_budget=10.0, delta=1e-5,
                           registry_dir=tmp_path / "registry")
        site.state_dir.mkdir()
        ledger = PrivacyLedger(site.state_dir, site=site.name, delta=1e-5)
        # Execute: the (noisy) count n
        plans[n] = plan_round(site, ledger, BudgetPlanner(ledger, 10.0), settings, count=n,
                              run_id="r", server_round=1, num_rounds=5)
        planned = json.loads((site.state_dir / "privacy-plan.json").read_text())
        # Assert: sigma is planned for every step of every round, so 5 rounds of them
        # exactly spend the budget
        assert planned["planned-steps"] == 5 * plans[n].steps
        eps = compose_epsilon([(plans[n].noise_multiplier, plans[n].sample_rate,
                                5 * plans[n].steps)], delta=1e-5)
        assert eps == pytest.approx(10.0, abs=0.05)
    assert (plans[1000].sample_rate, plans[1000].steps) == (0.1, 10)
    assert (plans[60].sample_rate, plans[60].steps) == (1.0, 1)
    assert TrainSettings(batch_size=100).steps_per_round(0.1) == 1  # local-steps otherwise


def test_warmup_release_keeps_the_asked_noise_when_the_budget_affords_it(tmp_path):
    from fedaug.privacy import BudgetPlanner
    from fedaug.privacy.planner import warmup_noise_multiplier as release_noise_multiplier

    ledger = PrivacyLedger(tmp_path, site="s", delta=1e-5)
    # epsilon 10: sigma 2 costs 2.17, under half the budget
    assert release_noise_multiplier(2.0, BudgetPlanner(ledger, 10.0)) == 2.0


def test_warmup_release_adds_noise_to_fit_half_of_a_small_budget(tmp_path):
    from fedaug.privacy import BudgetPlanner
    from fedaug.privacy.planner import warmup_noise_multiplier as release_noise_multiplier

    ledger = PrivacyLedger(tmp_path, site="s", delta=1e-5)
    # epsilon 1: sigma 2 alone would spend 2.17 and the site used to decline
    assert compose_epsilon([(2.0, 1.0, 1)], delta=1e-5) > 1.0
    sigma = release_noise_multiplier(2.0, BudgetPlanner(ledger, 1.0))
    assert sigma is not None and 6.0 < sigma < 10.0
    assert compose_epsilon([(sigma, 1.0, 1)], delta=1e-5) == pytest.approx(0.5, rel=0.01)
    assert compose_epsilon([(sigma, 1.0, 1)], delta=1e-5) <= 0.5


def test_warmup_release_takes_half_of_what_is_left_after_earlier_runs(tmp_path):
    from fedaug.privacy import BudgetPlanner
    from fedaug.privacy.planner import warmup_noise_multiplier as release_noise_multiplier

    ledger = PrivacyLedger(tmp_path, site="s", delta=1e-5)
    ledger.append(mechanism="dp-sgd", noise_multiplier=3.0, sample_rate=1.0, steps=20,
                  run="earlier", round=1)
    spent = ledger.epsilon()
    # sigma 2 would add 0.49 on top of this history; half of the 0.4 left is 0.2
    budget = spent + 0.4
    sigma = release_noise_multiplier(2.0, BudgetPlanner(ledger, budget))
    after = compose_epsilon([*ledger.history(), (sigma, 1.0, 1)], delta=1e-5)
    assert sigma > 2.0
    assert after == pytest.approx(spent + 0.2, abs=2e-3) and after <= spent + 0.2 + 1e-9
    # a site with almost nothing left declines rather than spend it
    assert release_noise_multiplier(2.0, BudgetPlanner(ledger, spent + 1e-4)) is None


def test_warmup_release_refuses_a_bad_size_before_spending(tmp_path):
    from fedaug.client.site import SiteContext
    from fedaug.client.warmup import release_class_sums
    from fedaug.config import RunConfig
    from fedaug.errors import ConfigError

    site = SiteContext(name="s", state_dir=tmp_path, data="digits", partition_id=0,
                       num_partitions=2, epsilon_budget=10.0, delta=1e-5,
                       registry_dir=tmp_path.parent / f"{tmp_path.name}-registry")
    run = RunConfig.from_mapping({"data": "digits"}, source="test")
    with pytest.raises(ConfigError, match="warm-up release size") as err:
        release_class_sums(site=site, run=run, noise_multiplier=2.0, num_classes=10,
                           image_size=8, channels=1, run_id="r", release_size=0)
    assert "warmup-size" in str(err.value)
    assert len(PrivacyLedger(tmp_path, site="s", delta=1e-5).entries) == 0
    # a valid size releases sums of that many pixels per class
    release = release_class_sums(site=site, run=run, noise_multiplier=2.0, num_classes=10,
                                 image_size=8, channels=1, run_id="r", release_size=4)
    assert release["class-sums"].shape == (10, 16)
    assert len(PrivacyLedger(tmp_path, site="s", delta=1e-5).entries) == 1


def test_warmup_release_is_a_gaussian_mechanism_of_the_stated_multiplier():
    """From the adversary's side: one example (every pixel at the bound 1) moves the
    released sums by sqrt(D) and the released count by 1; measured in the noise the release
    really has, that shift is 1 / sigma (a Gaussian mechanism with multiplier sigma), and
    the count's noise is far below the unweighted count's sigma * sqrt(D + 1)."""
    import math

    import torch

    from fedaug.client.warmup import count_weight, noise_class_sums
    from fedaug.privacy.noise import NoiseSource

    sigma, d, rows = 2.0, 784, 4000
    sums, counts, stated = noise_class_sums(torch.zeros(rows, d, dtype=torch.float64),
                                            torch.zeros(rows, dtype=torch.float64),
                                            noise_multiplier=sigma,
                                            noise=NoiseSource.for_tests(3))
    sum_std, count_std = float(sums.std()), float(counts.std())
    w = count_weight(d)
    assert sum_std == pytest.approx(stated, rel=0.01)  # the std the server denoises with
    assert sum_std == pytest.approx(sigma * math.sqrt(d + w * w), rel=0.01)
    assert count_std == pytest.approx(sigma * math.sqrt(d + w * w) / w, rel=0.05)
    assert abs(float(counts.mean())) < 4 * count_std / math.sqrt(rows)
    # the worst neighbour's shift (sqrt(D) on the sums, 1 on the count) in noise units
    shift = math.sqrt(d / sum_std**2 + 1 / count_std**2)
    assert shift == pytest.approx(1 / sigma, rel=0.005)
    assert count_std < sigma * math.sqrt(d + 1) / 4


def test_warmup_spread_release_is_charged_as_the_two_mechanisms_it_is(tmp_path):
    """With the spread, two Gaussian releases leave in one reply; both are in the ledger
    before the reply exists, and together they cost what the planner allowed one of
    multiplier sigma / sqrt(1 + ratio^-2) to cost."""
    import math

    import numpy as np

    from fedaug.client.site import SiteContext
    from fedaug.client.warmup import release_class_sums
    from fedaug.config import RunConfig
    from fedaug.generator.spread import SPREAD_CLIP
    from fedaug.privacy.planner import SPREAD_NOISE_RATIO

    def site(folder):
        return SiteContext(name="s", state_dir=folder, data="digits", partition_id=0,
                           num_partitions=2, epsilon_budget=10.0, delta=1e-5,
                           registry_dir=folder.parent / f"{folder.name}-registry")

    run = RunConfig.from_mapping({"data": "digits"}, source="test")
    one = site(tmp_path / "a")
    release = release_class_sums(site=one, run=run, noise_multiplier=2.0, num_classes=10,
                                 image_size=8, channels=1, run_id="r", spread=True)
    assert release["class-spread"].shape == (10, 49 * 50 // 2)
    assert release["spread-noise-std"][0] == pytest.approx(2.0 * SPREAD_NOISE_RATIO
                                                           * SPREAD_CLIP ** 2)
    ledger = PrivacyLedger(tmp_path / "a", site="s", delta=1e-5)
    assert [(e.release, e.noise_multiplier) for e in ledger.entries] == [
        ("warm-start", pytest.approx(2.0)), ("warm-start-spread", pytest.approx(2.0 * SPREAD_NOISE_RATIO))]
    single = PrivacyLedger(tmp_path / "b", site="s", delta=1e-5)
    single.append(mechanism="gaussian", noise_multiplier=2.0 / math.sqrt(1 + SPREAD_NOISE_RATIO ** -2),
                  sample_rate=1.0, steps=1, run="r", round=0, release="warm-start")
    assert ledger.epsilon() == pytest.approx(single.epsilon(), rel=1e-3)
    # asked again in the same run: the stored release, nothing spent
    again = release_class_sums(site=one, run=run, noise_multiplier=2.0, num_classes=10,
                               image_size=8, channels=1, run_id="r", spread=True)
    assert np.array_equal(again["class-spread"], release["class-spread"])
    assert len(PrivacyLedger(tmp_path / "a", site="s", delta=1e-5).entries) == 2

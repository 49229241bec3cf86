"""End-to-end simulated federations on the built-in digits with tiny models (real code paths)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel
from flwr.app import Array, Message

from conftest import TINY
from fedaug.augment import Policy
from fedaug.config import RunConfig
from fedaug.data import load_digits_builtin
from fedaug.errors import ConfigError
from fedaug.privacy import PrivacyLedger, compose_epsilon
from fedaug.simulations.run import AUDIT_FILE, simulate


def _run(tmp_path, **extra) -> RunConfig:
    return RunConfig.from_mapping({**TINY, "out-dir": str(tmp_path / "out"),
                                   "num-server-rounds": 1, **extra}, source="test")


def test_two_sites_one_round_end_to_end(tmp_path, caplog):
    # Prepare / Execute
    caplog.set_level(logging.INFO, logger="fedaug")
    run = _run(tmp_path)
    strategy = simulate(run, num_sites=2, progress=False)
    out = tmp_path / "out"
    # Assert: diffusers loads the global folder
    unet = UNet2DModel.from_pretrained(out / "global", subfolder="unet")
    DDPMScheduler.from_pretrained(out / "global", subfolder="scheduler")
    assert unet.config.num_class_embeds == 10
    card = json.loads((out / "global" / "model_card.json").read_text())
    assert card["rounds"] == 1
    assert card["classes"] == [str(i) for i in range(10)]
    assert card["image-shape"] == [8, 8, 1]
    # the automatic recipe filled the keys TINY leaves open, and the card says which
    assert card["prediction-type"] == "edm"
    assert set(card["recipe-auto"]) == {"prediction-type", "local-epochs", "noise-levels",
                                        "warmup-size", "warmup-spread", "label-dropout",
                                        "guidance-scale"}
    assert card["recipe-auto"]["warmup-spread"]["value"] == 0  # 8x8 images: off
    # no null class and no guidance at 8x8: the UNet has one embedding per class
    assert card["recipe-auto"]["label-dropout"]["value"] == 0.0
    assert card["recipe-auto"]["guidance-scale"]["value"] == 1.0
    # (TINY gives warmup-steps, public-steps, batch-size and local-steps; the test gives
    # the rounds); the public pretraining ran, on no site's data
    assert "public pretraining: 5 steps on patches of scikit-learn's sample" in caplog.text
    assert card["train-settings"]["local-epochs"] == 0.0  # local-steps was given
    assert card["train-settings"]["local-steps"] == 2
    Policy.from_dict(card["policy"])
    # the global policy beside the model, ready for `fedaug augment --policy`
    assert Policy.from_json((out / "global" / "policy.json").read_text()) == \
        Policy.from_dict(card["policy"])
    # the class mix from the warm-up's noised class counts: what synthetic labels follow
    prior = card["class-prior"]["proportions"]
    assert len(prior) == 10 and min(prior) > 0 and sum(prior) == pytest.approx(1.0)
    assert "noised class counts" in card["class-prior"]["from"]
    assert [s["site"] for s in card["sites"]] == ["site-0", "site-1"]
    for site in card["sites"]:
        assert 0 < site["epsilon"] <= run.epsilon
        assert site["delta"] == run.delta
        ledger = PrivacyLedger(out / "sites" / site["site"], site=site["site"], delta=run.delta)
        assert site["epsilon"] == pytest.approx(ledger.epsilon())
        # the warm-up release (round 0), then the run's count, then the DP-SGD round: each
        # recorded before it left
        assert [(e.release, e.round) for e in ledger.entries] == [
            ("warm-start", 0), ("count", 1), ("dp-sgd", 1)]
    assert (out / "sample_grid.png").stat().st_size > 0
    # the membership-inference audit is computed on the sites' exact records: beside the
    # published model folder, never in its card
    assert "privacy-audit" not in card
    audit = json.loads((out / AUDIT_FILE).read_text())
    assert 0.0 <= audit["memorization-rate"] <= 1.0
    assert 0.0 <= audit["membership-inference-auc"] <= 1.0
    assert strategy.rounds[0].aggregated == 2


def test_the_spread_release_is_in_the_reply_and_in_the_ledger_before_it(tmp_path):
    """Asked for the classes' spread, a site's warm-up reply carries its noised second
    moments and their stated noise, both releases are in its ledger (the spread's noise is
    its recorded multiplier times the clip squared), and the server pretrains on draws."""
    from fedaug.generator.spread import SPREAD_CLIP

    run = _run(tmp_path, **{"warmup-spread": 3})
    captured: list[Message] = []
    simulate(run, num_sites=2, capture=captured, progress=False, audit=False)
    warmups = [m for m in captured if m.metadata.message_type == "query"]
    assert len(warmups) == 2
    for msg in warmups:
        arrays = msg.content["arrays"]
        assert set(arrays.keys()) == {"class-sums", "class-counts", "noise-std",
                                      "class-spread", "spread-noise-std"}
        assert tuple(arrays["class-spread"].shape) == (10, 49 * 50 // 2)  # 7x7 deviations
        site = msg.content["config"]["site"]
        ledger = PrivacyLedger(tmp_path / "out" / "sites" / site, site=site, delta=run.delta)
        assert [e.release for e in ledger.entries][:2] == ["warm-start", "warm-start-spread"]
        (sigma,) = [e.noise_multiplier for e in ledger.entries if e.release == "warm-start-spread"]
        assert arrays["spread-noise-std"].numpy() == pytest.approx([sigma * SPREAD_CLIP ** 2])
    # the central images' grid: one row per class, the central image then seven draws
    from PIL import Image

    grid = Image.open(tmp_path / "out" / "central_images.png")
    assert grid.height > grid.width  # 10 rows of 8


def test_site_messages_hold_only_parameters_policy_and_metrics(tmp_path):
    # Prepare
    run = _run(tmp_path)
    captured: list[Message] = []
    digits = load_digits_builtin(split="train")
    data_shapes = {digits.images.shape[1:], digits.images.shape[1:3],
                   digits.images.shape[1:3][::-1]}
    # Execute
    simulate(run, num_sites=2, capture=captured, progress=False, audit=False)
    # Assert: a warm-up release (noised class sums) and a training reply per site
    assert len(captured) == 4
    warmups = [m for m in captured if m.metadata.message_type == "query"]
    assert len(warmups) == 2
    for msg in warmups:
        arrays = msg.content["arrays"]
        assert set(arrays.keys()) == {"class-sums", "class-counts", "noise-std"}
        assert tuple(arrays["class-sums"].shape) == (10, 64)  # one noised sum per class
        assert tuple(arrays["class-counts"].shape) == (10,)
        # the mechanism's public parameter: sigma * sqrt(D + w^2), w = D ** 0.25, with the
        # sigma the site recorded for its warm-start release
        site = msg.content["config"]["site"]
        ledger = PrivacyLedger(tmp_path / "out" / "sites" / site, site=site, delta=run.delta)
        (sigma,) = [e.noise_multiplier for e in ledger.entries if e.release == "warm-start"]
        assert arrays["noise-std"].numpy() == pytest.approx([sigma * (64 + 8) ** 0.5], rel=1e-5)
        assert set(msg.content["config"].keys()) == {"site", "status"}
    unet_names = set(UNet2DModel.from_pretrained(tmp_path / "out" / "global",
                                                 subfolder="unet").state_dict())
    for msg in (m for m in captured if m.metadata.message_type != "query"):
        content = msg.content
        assert set(content.array_records) == {"arrays"}
        arrays = content["arrays"]
        assert set(arrays.keys()) == unet_names  # model parameters, nothing else
        for name, arr in arrays.items():
            shape = tuple(arr.shape)
            assert shape not in data_shapes or "weight" in name, (name, shape)
            assert not (len(shape) >= 3 and shape[0] > 64 and shape[1:3] == (8, 8)), name
        assert set(content.metric_records) == {"metrics"}
        for key, value in content["metrics"].items():
            assert isinstance(value, (int, float)), key  # scalars only: aggregate metrics
        cfg = content["config"]
        assert set(cfg.keys()) == {"site", "status", "policy"}
        Policy.from_json(cfg["policy"])  # the only text: a valid policy
        assert len(cfg["site"]) < 64 and cfg["status"] in {"trained", "budget-exhausted"}


def test_warmup_release_at_a_smaller_size_and_a_small_budget(tmp_path):
    # Prepare: epsilon 1 (the asked sigma 2 would spend 2.17) and 4x4 sums of the 8x8 digits
    run = _run(tmp_path, **{"epsilon": 1.0, "warmup-size": 4})
    captured: list[Message] = []
    # Execute
    simulate(run, num_sites=2, capture=captured, progress=False, audit=False)
    # Assert: every site released 4x4 class sums, at a raised sigma that spends half
    warmups = [m for m in captured if m.metadata.message_type == "query"]
    assert len(warmups) == 2
    for msg in warmups:
        assert tuple(msg.content["arrays"]["class-sums"].shape) == (10, 16)
        assert msg.content["config"]["status"] == "released"
    for site in ("site-0", "site-1"):
        ledger = PrivacyLedger(tmp_path / "out" / "sites" / site, site=site, delta=run.delta)
        first = ledger.entries[0]
        assert first.mechanism == "gaussian" and first.noise_multiplier > 2.0
        assert compose_epsilon([(first.noise_multiplier, 1.0, 1)], delta=run.delta) <= 0.5
        assert ledger.epsilon() <= 1.0
    assert (tmp_path / "out" / "central_images.png").stat().st_size > 0


def test_budget_exhausted_sites_stop_and_run_ends_cleanly(tmp_path):
    # Prepare: every site has budget 1.0 and a fixed sigma, so steps are cut, then refused
    # (no warm start: at this budget it would take half, and the DP-SGD cut is under test)
    run = _run(tmp_path, **{"num-server-rounds": 6, "noise-multiplier": 2.0, "local-steps": 20,
                            "epsilon": 1.0, "warmup-noise-multiplier": 0.0})
    # Execute
    strategy = simulate(run, num_sites=2, progress=False, audit=False)
    # Assert
    card = json.loads((tmp_path / "out" / "global" / "model_card.json").read_text())
    assert strategy.ended and "privacy budget left" in strategy.ended
    assert card["ended-early"] == strategy.ended
    assert len(card["sites"]) == 2
    for site in card["sites"]:
        assert 0 < site["epsilon"] <= 1.0
    # the sites' noisy counts differ, so their rates and their last rounds may too
    assert "budget-exhausted" in {site["status"] for site in card["sites"]}


def test_epsilon_continues_across_runs_from_the_state_folder(tmp_path):
    # Prepare: one run of 1 round that spends a budget of 5; the sites keep their state
    # folders (and spending records) outside the runs' output folders
    run = _run(tmp_path)
    sites = {i: {"state-dir": str(tmp_path / "sites" / f"site-{i}"),
                 "spending-registry": str(tmp_path / "registry")} for i in range(2)}
    simulate(run.replace(epsilon=5.0, out_dir=str(tmp_path / "run-1")), num_sites=2,
             progress=False, audit=False, node_overrides=sites)
    state = tmp_path / "sites" / "site-0"
    first = PrivacyLedger(state, site="site-0", delta=run.delta)
    eps1 = first.epsilon()
    # Execute: the site "restarts" in a new run with the same state folder, a budget of 10
    simulate(run.replace(out_dir=str(tmp_path / "run-2")), num_sites=2, progress=False,
             audit=False, node_overrides=sites)
    # Assert: the history grew and epsilon is composed over both runs, within budget
    again = PrivacyLedger(state, site="site-0", delta=run.delta)
    assert [e.mechanism for e in again.entries].count("dp-sgd") == 2
    assert len({e.run for e in again.entries}) == 2
    assert again.epsilon() > eps1
    assert again.epsilon() == pytest.approx(compose_epsilon(again.history(), delta=run.delta))
    assert again.epsilon() <= run.epsilon


def test_poisoned_and_malformed_updates_are_excluded(tmp_path):
    # Prepare: site-1 replies with NaN weights, site-2 with a wrong-shaped array
    run = _run(tmp_path, **{"min-sites": 1})  # one honest site is enough to aggregate

    def poison(grid):
        honest = grid._app

        def app(msg, ctx):
            reply = honest(msg, ctx)
            pid = ctx.node_config["partition-id"]
            arrays = reply.content["arrays"]
            name = next(iter(arrays.keys()))
            if pid == 1:
                arrays[name] = Array(np.full(arrays[name].shape, np.nan, dtype=np.float32))
            if pid == 2:
                arrays[name] = Array(np.zeros((3, 3), dtype=np.float32))
            return reply

        grid._app = app

    # Execute
    strategy = simulate(run, num_sites=3, progress=False, grid_hook=poison, audit=False)
    # Assert
    excluded = strategy.rounds[0].excluded
    assert "NaN" in excluded["site-1"]
    assert "shape" in excluded["site-2"]
    assert strategy.rounds[0].aggregated == 1
    unet = UNet2DModel.from_pretrained(tmp_path / "out" / "global", subfolder="unet")
    assert all(torch.isfinite(p).all() for p in unet.parameters())


def test_a_failing_site_does_not_take_down_the_round(tmp_path):
    run = _run(tmp_path)

    def break_one(grid):
        honest = grid._app

        def app(msg, ctx):
            if ctx.node_config["partition-id"] == 0:
                raise RuntimeError("disk on fire")
            return honest(msg, ctx)

        grid._app = app

    strategy = simulate(run, num_sites=3, progress=False, grid_hook=break_one, audit=False)
    assert "disk on fire" in strategy.rounds[0].excluded["node-1000"]
    assert strategy.rounds[0].aggregated == 2


def test_float16_transfer_halves_bytes_and_keeps_a_float32_global(tmp_path):
    full = simulate(_run(tmp_path / "a"), num_sites=2, progress=False, audit=False)
    half = simulate(_run(tmp_path / "b", **{"transfer-dtype": "float16"}), num_sites=2,
                    progress=False, audit=False)
    r32, r16 = full.rounds[0], half.rounds[0]
    # Each array also carries a small .npy header, so tiny models save a little under half
    assert 0.45 < r16.bytes_up_per_site / r32.bytes_up_per_site < 0.6
    assert 0.45 < r16.bytes_down_per_site / r32.bytes_down_per_site < 0.6
    unet = UNet2DModel.from_pretrained(tmp_path / "b" / "out" / "global", subfolder="unet")
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in unet.parameters())


def test_institution_level_dp_clips_noises_and_accounts_at_the_server(tmp_path):
    run = _run(tmp_path, **{"central-noise-multiplier": 1.0, "central-clip-norm": 0.5,
                            "num-server-rounds": 2, "warmup-noise-multiplier": 0.0})
    simulate(run, num_sites=2, progress=False, audit=False)
    card = json.loads((tmp_path / "out" / "global" / "model_card.json").read_text())
    inst = card["institution-level-dp"]
    server_ledger = PrivacyLedger(tmp_path / "out" / "server", site="server", delta=run.delta)
    assert len(server_ledger.entries) == 2
    assert inst["epsilon"] == pytest.approx(compose_epsilon([(1.0, 1.0, 2)], delta=run.delta))


def test_private_policy_search_is_charged_before_it_leaves(tmp_path):
    run = _run(tmp_path, **{"policy-search-epsilon": 1.0, "num-server-rounds": 2})
    captured: list[Message] = []
    simulate(run, num_sites=2, capture=captured, progress=False, audit=False)
    ledger = PrivacyLedger(tmp_path / "out" / "sites" / "site-0", site="site-0", delta=run.delta)
    assert [e.mechanism for e in ledger.entries].count("exponential") == 1  # once per run
    assert ledger.pure_epsilons() == [1.0]
    assert ledger.epsilon() <= run.epsilon
    train = [m for m in captured if m.metadata.message_type != "query"]
    first, second = (m.content["config"]["policy"] for m in train[0::2])
    assert first == second  # the same release in every reply of the run


def test_server_restart_resumes_from_the_last_completed_round(tmp_path):
    # Prepare: the server "dies" when it tries to start round 3 of 3
    run = _run(tmp_path, **{"num-server-rounds": 3})

    def die_in_round_3(grid):
        real = grid.send_and_receive
        calls = {"n": 0}

        def send_and_receive(messages, *, timeout=None):
            messages = list(messages)
            if messages and messages[0].metadata.message_type == "train":
                calls["n"] += 1
                if calls["n"] == 3:
                    raise RuntimeError("server killed")
            return real(messages, timeout=timeout)

        grid.send_and_receive = send_and_receive

    with pytest.raises(RuntimeError, match="server killed"):
        simulate(run, num_sites=2, progress=False, audit=False, grid_hook=die_in_round_3)
    before_kill = json.loads((tmp_path / "out" / "global" / "model_card.json").read_text())
    assert before_kill["rounds"] == 2
    # Execute: a plain re-run into the folder is refused before anything is spent; a run
    # with resume continues it
    with pytest.raises(ConfigError, match="already holds a run.*--resume"):
        simulate(run, num_sites=2, progress=False, audit=False)
    strategy = simulate(run.replace(resume=True), num_sites=2, progress=False, audit=False)
    # Assert: only round 3 ran; sites' ledgers hold 3 rounds in all
    assert strategy.round_offset == 2
    rounds = sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir())
    assert rounds == ["round-0001", "round-0002", "round-0003"]
    assert [r.server_round for r in strategy.rounds] == [3]
    card = json.loads((tmp_path / "out" / "global" / "model_card.json").read_text())
    assert card["rounds"] == 3
    # the warm start is not repeated: its class prior comes back from the server's state
    assert card["class-prior"] == before_kill["class-prior"] is not None
    ledger = PrivacyLedger(tmp_path / "out" / "sites" / "site-0", site="site-0", delta=run.delta)
    assert [e.round for e in ledger.entries if e.mechanism == "dp-sgd"] == [1, 2, 3]
    assert [e.release for e in ledger.entries].count("count") == 1  # the same run went on
    assert ledger.epsilon() <= run.epsilon
    # resuming a finished run does nothing and spends nothing
    before = len(ledger.entries)
    again = simulate(run.replace(resume=True), num_sites=2, progress=False, audit=False)
    assert again.rounds == []
    assert len(PrivacyLedger(tmp_path / "out" / "sites" / "site-0", site="site-0",
                             delta=run.delta).entries) == before


def test_a_round_below_min_sites_is_not_aggregated_and_the_run_says_why(tmp_path):
    # Prepare: three sites, min-sites 3; site-2 crashes in every training round
    run = _run(tmp_path, **{"min-sites": 3, "num-server-rounds": 2})

    def break_one(grid):
        honest = grid._app

        def app(msg, ctx):
            if ctx.node_config["partition-id"] == 2 and msg.metadata.message_type == "train":
                raise RuntimeError("site-2 lost its disk")
            return honest(msg, ctx)

        grid._app = app

    # Execute
    strategy = simulate(run, num_sites=3, progress=False, grid_hook=break_one, audit=False)

    # Assert: nothing published from two sites, and the reason names the missing site
    assert [r.aggregated for r in strategy.rounds] == [0]
    assert "fewer than min-sites=3" in strategy.ended and "site-2" in strategy.ended
    assert not (tmp_path / "out" / "global").exists()

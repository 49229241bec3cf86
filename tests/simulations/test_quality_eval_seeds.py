"""simulations/benchmarks/quality.py --eval-seeds: each model is trained once and evaluated
once per evaluation seed, and the spread over those evaluations is reported per model."""

from __future__ import annotations

import json

import pytest


def _row(epsilon: float, seed: int, eval_seed: int, acc: float) -> dict:
    return {"epsilon": epsilon, "seed": seed, "eval-seed": eval_seed, "tstr-accuracy": acc,
            "tstr-auc": acc + 0.1, "tstr-balanced-accuracy": acc - 0.05,
            "trtr-accuracy": 0.9, "majority-class": 0.7, "frechet-distance": 1.0,
            "per-site": [], "site-worst-held-out-gain": None,
            "site-mean-held-out-gain": None, "train-wall-s": None}


def test_each_model_is_trained_once_and_evaluated_per_seed(monkeypatch, capsys,
                                                           benchmark_script) -> None:
    quality = benchmark_script("quality")
    calls = []

    def fake_run_one(**kw):
        calls.append(kw)
        return _row(kw["epsilon"], kw["seed"], kw["eval_seed"],
                    0.80 + 0.01 * kw["eval_seed"] + 0.1 * kw["seed"])

    monkeypatch.setattr(quality, "run_one", fake_run_one)
    assert quality.main(["--epsilon", "10", "--seeds", "0,1", "--eval-seeds", "3,5",
                         "--json"]) == 0
    # the first evaluation of a data seed trains (and decides), the later ones reuse it
    assert [(c["seed"], c["eval_seed"], c["reuse_models"], c["site_decisions"])
            for c in calls] == [(0, 3, False, True), (0, 5, True, False),
                                (1, 3, False, True), (1, 5, True, False)]
    out = json.loads(capsys.readouterr().out)
    spread = out["evaluation-spread"]["eps10-seed1"]["tstr-accuracy"]
    assert spread["lowest"] == pytest.approx(0.93) and spread["highest"] == pytest.approx(0.95)
    assert spread["mean"] == pytest.approx(0.94)
    assert spread["sd"] == pytest.approx(0.02 / 2 ** 0.5)


def test_without_eval_seeds_nothing_changes(monkeypatch, capsys, benchmark_script) -> None:
    quality = benchmark_script("quality")
    calls = []

    def fake_run_one(**kw):
        calls.append(kw)
        return _row(kw["epsilon"], kw["seed"], kw["seed"], 0.8)

    monkeypatch.setattr(quality, "run_one", fake_run_one)
    assert quality.main(["--epsilon", "10", "--seeds", "0", "--reuse-models"]) == 0
    assert [(c["eval_seed"], c["reuse_models"], c["site_decisions"]) for c in calls] == [
        (None, True, True)]
    text = capsys.readouterr().out
    assert "evaluation seeds" not in text and "   0     0.800" in text


def test_spread_needs_two_evaluations_of_a_model(benchmark_script) -> None:
    quality = benchmark_script("quality")
    assert quality.evaluation_spread([_row(10, 0, 0, 0.8), _row(10, 1, 1, 0.7)]) == {}

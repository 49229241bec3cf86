"""The main job as a user runs it: one line per event in a log file, a final summary, and a
second run into the same folder refused before anything is spent."""

from __future__ import annotations

import json
import os
import subprocess
import sys

TINY_FLAGS = ["--sites", "2", "--rounds", "2", "--set", "model-channels=8,16",
              "--set", "local-steps=1", "--set", "batch-size=32", "--set", "warmup-steps=5",
              "--set", "sample-steps=2", "--set", "samples-per-class=2"]


def _simulate(out, *extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "fedaug.cli", "simulate", "--out", str(out),
                           *TINY_FLAGS, *extra], capture_output=True, text=True, env=env,
                          timeout=600)


def test_the_main_job_logs_one_line_per_event_and_refuses_a_second_run(tmp_path):
    # Execute: output into pipes, as into a log file (no terminal)
    first = _simulate(tmp_path / "out")
    second = _simulate(tmp_path / "out")

    # Assert: one line per round, none printed twice, no progress-bar fragments
    assert first.returncode == 0, first.stderr[-2000:]
    lines = [line for line in first.stderr.splitlines() if line.strip()]
    rounds = [line for line in lines if "fedaug.server: round " in line]
    assert [r.split("round ")[1].split(":")[0] for r in rounds] == ["1/2", "2/2"]
    body = [line.split(" ", 1)[1] for line in lines if line[:2].isdigit()]  # minus the time
    assert len(body) == len(set(body)), "a log line was printed twice"
    assert not any(ch in first.stderr for ch in ("\r", "█", "it/s]"))
    assert "INFO:" not in first.stderr  # nothing through the root logger's format
    assert "fedaug simulate finished: 2 round(s), 2 aggregated." in first.stdout
    assert "this run" in first.stdout and "in total" in first.stdout
    # each simulated site's decision on the synthetic data: a log line, a summary line and
    # OUT/site-decisions.json, never the shared model folder (exact counts, absent classes)
    decided = [line for line in lines if "fedaug.simulation: site-" in line]
    assert [d.split("site-")[1][:1] for d in decided] == ["0", "1"]
    assert all("use" in d and "validation gain" in d for d in decided)
    assert first.stdout.count("synthetic data: ") == 2
    card = (tmp_path / "out" / "global" / "model_card.json").read_text()
    assert "site-decisions" not in card and "classes-absent" not in card
    sites = json.loads((tmp_path / "out" / "site-decisions.json").read_text())["sites"]
    assert all((tmp_path / "out" / "sites" / s["site"] / "decision.json").is_file()
               for s in sites)
    assert [s["site"] for s in sites] == ["site-0", "site-1"]
    for s in sites:
        lo, hi = s["gain-interval"]
        assert lo <= s["gain"] <= hi
        assert s["recommendation"].startswith(("do not use", "use synthetic-pretrain",
                                               "use synthetic-mix"))
        bar = -0.05 if s["classes-absent-at-site"] else 0.0
        assert s["use-synthetic"] == (lo > bar)
    # the second run is refused before anything is spent, naming --resume
    assert second.returncode == 2
    assert "already holds a run" in second.stderr and "--resume" in second.stderr
    assert "round 1/2" not in second.stderr

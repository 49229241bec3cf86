"""Run a simulated federation in this process (``fedaug simulate``)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from fedaug import keys
from fedaug.client.app import app as client_app
from fedaug.config import RunConfig
from fedaug.server.app import run_server
from fedaug.server.strategy import FedAugStrategy
from fedaug.simulations.engine import InProcessGrid

__all__ = ["simulate", "decide_sites", "audit_simulation", "DECISIONS_FILE", "AUDIT_FILE"]

log = logging.getLogger("fedaug.simulation")


def simulate(run: RunConfig, *, num_sites: int, capture: list | None = None,
             progress: bool = True, node_overrides: dict[int, dict[str, Any]] | None = None,
             grid_hook: Any = None, audit: bool = True,
             site_decisions: bool = False) -> FedAugStrategy:
    """Simulate ``num_sites`` sites on this machine with the real Client and Server apps.

    Site ``i`` trains on partition ``i`` of ``run.data`` and keeps its privacy ledger in
    ``OUT/sites/site-i``. ``node_overrides`` adds node config per site (e.g. a smaller
    ``epsilon-budget`` for one site). With ``audit`` the global model is audited
    (memorization rate, membership-inference AUC) against the data's test split, into
    ``OUT/privacy-audit.json`` (:data:`AUDIT_FILE`). With
    ``site_decisions`` every simulated site decides, on a validation part of its own data,
    whether to use the global model's synthetic data (``fedaug evaluate --site-data``), into
    ``OUT/site-decisions.json`` (see :func:`decide_sites`).
    """
    node_configs = {
        1000 + i: {keys.NODE_PARTITION_ID: i, keys.NODE_NUM_PARTITIONS: num_sites,
                **(node_overrides or {}).get(i, {})}
        for i in range(num_sites)
    }
    grid = InProcessGrid(client_app, node_configs, run.to_mapping(), capture=capture,
                         progress=progress)
    if grid_hook is not None:
        grid_hook(grid)
    log.info("simulating %d sites on %s (%s, alpha=%s), %s rounds, epsilon budget %.2f per "
             "site", num_sites, run.data, run.partition, run.alpha, run.num_server_rounds,
             run.epsilon)
    strategy = run_server(grid, run)
    if audit and strategy.rounds and (Path(run.out_dir) / "global").is_dir():
        audit_simulation(run)
    if site_decisions and strategy.rounds and (Path(run.out_dir) / "global").is_dir():
        decide_sites(run, num_sites=num_sites, progress=progress)
    return strategy


#: The simulated sites' decisions, beside (never inside) the published model folder.
DECISIONS_FILE = "site-decisions.json"
#: The simulation's membership-inference audit, beside (never inside) the model folder: its
#: figures are computed on the sites' exact records and are no DP release.
AUDIT_FILE = "privacy-audit.json"


def decide_sites(run: RunConfig, *, num_sites: int, progress: bool = False,
                 test: Any = None, metric: str | None = None) -> list[dict[str, Any]]:
    """Each simulated site's decision on the global model's synthetic data (one draw of
    synthetic samples for all sites), logged one line per site and written to
    ``OUT/site-decisions.json`` and ``OUT/sites/<site>/decision.json``. ``test`` and
    ``metric`` (default: the decision's default): see :func:`fedaug.evaluate.decision.decide`.

    They stay out of ``OUT/global``: a decision holds a site's exact record count, the
    classes it lacks and accuracies on its records, none of them a DP release, and the
    global folder is what gets shared.
    """
    from fedaug.atomic import atomic_write_json
    from fedaug.client.site import simulated_site_data
    from fedaug.errors import FedaugError
    from fedaug.evaluate.decision import site_decision
    from fedaug.generator.generate import generate

    out_dir = Path(run.out_dir)
    model = out_dir / "global"
    data = [simulated_site_data(run, i, num_sites) for i in range(num_sites)]
    per_class = max(100, min(500, max(len(d) for d in data) // 2))
    syn_x, syn_y, names = generate(model, num_samples=per_class * len(data[0].class_names),
                                   seed=run.seed, steps=run.sample_steps, labels="balanced",
                                   progress=progress and sys.stderr.isatty())
    out = []
    for i, site in enumerate(data):
        name = f"site-{i}"
        try:
            d = site_decision(model, site, seed=run.seed, synthetic=(syn_x, syn_y), test=test,
                              steps=run.sample_steps, **({"metric": metric} if metric else {}))
        except FedaugError as err:  # a site too small to split: say so, decide nothing
            log.warning("%s: no decision on the synthetic data: %s", name, err)
            out.append({"site": name, "records": len(site), "recommendation": None,
                        "reason": str(err)})
            continue
        # the recommended option, or the best one when none is recommended
        option = d["recommended-option"] or d["best-synthetic-option"]
        entry = {"site": name, "records": len(site), "recommendation": d["recommendation"],
                 "option": option, "gain": d["options"][option]["gain"],
                 "gain-interval": d["options"][option]["gain-interval"],
                 "interval-level": d["interval-level"], "use-synthetic": d["use-synthetic"],
                 "rule": d["rule"], "metric": d["metric"],
                 "classes-absent-at-site": [names[c] for c in d["classes-absent-at-site"]],
                 "options": d["options"]}
        out.append(entry)
        atomic_write_json(out_dir / "sites" / name / "decision.json", d)
        log.info("%s (%d records): %s; %s, validation gain (%s) %+.3f [%+.3f, %+.3f]", name,
                 len(site), d["recommendation"], option, d["metric"], entry["gain"],
                 *entry["gain-interval"])
    atomic_write_json(out_dir / DECISIONS_FILE, {
        "definition": "each simulated site's decision on its own data, as `fedaug evaluate "
                      "--site-data` makes it: the cross-validated score (each site's "
                      "`metric`) of training with the synthetic data (pretraining or "
                      "mixing) against its local data alone, on its own records",
        "model": str(model), "synthetic-samples": int(len(syn_x)), "sites": out})
    return out


def audit_simulation(run: RunConfig) -> dict | None:
    """In simulation the researcher holds all the data: audit the global generator against
    the sites' training records (members) and the test split (never trained on), into
    ``OUT/privacy-audit.json``. Not into the model card: the figures are statistics of the
    sites' exact records, not DP releases, and the model folder is what gets published."""
    from fedaug.atomic import atomic_write_json
    from fedaug.data import load_image_source
    from fedaug.errors import FedaugError
    from fedaug.evaluate.report import privacy_audit

    try:
        train = load_image_source(run.data, split="train", size=run.image_size or None,
                                  seed=run.seed, labels=run.labels)
        test = load_image_source(run.data, split="test", size=run.image_size or None,
                                 seed=run.seed, labels=run.labels)
    except FedaugError as err:  # e.g. an image folder without a test split
        log.warning("privacy audit skipped: %s", err)
        return None
    result = privacy_audit(Path(run.out_dir) / "global", train, test, steps=run.sample_steps,
                           seed=run.seed, num_samples=min(500, 50 * train.num_classes),
                           progress=sys.stderr.isatty())
    atomic_write_json(Path(run.out_dir) / AUDIT_FILE, result)
    log.info("privacy audit: memorization rate %.3f, membership-inference AUC %.3f (%s)",
             result["memorization-rate"], result["membership-inference-auc"],
             Path(run.out_dir) / AUDIT_FILE)
    return result

"""``fedaug simulate``: a multi-site federation on this machine."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from tqdm.contrib.logging import logging_redirect_tqdm

from fedaug.errors import ConfigError

__all__ = ["register", "DEFAULT_SCENARIO"]

#: The scenario of a plain ``fedaug simulate``.
DEFAULT_SCENARIO = Path(__file__).with_name("default.toml")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``simulate`` to the ``fedaug`` command."""
    from fedaug.config import settings_help
    from fedaug.generator.recipe import rules_help

    s = sub.add_parser(
        "simulate",
        help="simulate a multi-site federation on this machine",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run N simulated sites and the aggregation server in this process. "
        "Defaults come from simulations/default.toml (5 sites, built-in digits, Dirichlet "
        "alpha 0.5, epsilon 10 per site). Writes OUT/global (diffusers folder + "
        "model_card.json), OUT/sample_grid.png and OUT/sites/<site>/ (privacy ledgers).",
        epilog="Every run-config key (use with --set KEY=VALUE or in a --config file):\n"
        + settings_help() + "\n\nThe automatic recipe: what an 'auto' key becomes (the "
        "server decides from the image size and epsilon; docs/dp-recipe.md gives the "
        "measurements behind each rule):\n" + rules_help(),
    )
    s.add_argument("--config", help="scenario TOML file (default: simulations/default.toml)")
    s.add_argument("--sites", type=int, help="number of simulated sites")
    s.add_argument("--rounds", type=int, help="federated rounds")
    s.add_argument("--epsilon", type=float, help="epsilon budget per site")
    s.add_argument("--alpha", type=float, help="Dirichlet label-skew concentration")
    s.add_argument("--data", help="'digits' (built-in), a MedMNIST .npz, or an image folder")
    s.add_argument("--labels", help="CSV of file,label rows when --data is a folder of DICOM "
                   "files")
    s.add_argument("--out", help="output folder")
    s.add_argument("--seed", type=int, help="run seed (public: data split, model "
                   "initialisation, evaluation; never the privacy noise)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="any other run-config key, e.g. --set local-steps=20 (repeatable)")
    s.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last completed round (without it, "
                   "an --out that holds a run is refused before anything is spent)")
    s.add_argument("--no-site-decisions", action="store_true",
                   help="skip the end-of-run check in which each simulated site decides, on a "
                   "validation part of its own data, whether the synthetic data helps it "
                   "(as `fedaug evaluate --site-data`; written to OUT/site-decisions.json)")
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    s.set_defaults(func=_cmd_simulate)


def _cmd_simulate(args: argparse.Namespace) -> int:
    from fedaug.config import RunConfig
    from fedaug.scenario import load_scenario
    from fedaug.simulations.run import AUDIT_FILE, simulate

    flags = {"num-server-rounds": args.rounds, "epsilon": args.epsilon, "alpha": args.alpha,
             "data": args.data, "labels": args.labels, "out-dir": args.out, "seed": args.seed,
             "resume": True if args.resume else None}
    given = {k: v for k, v in flags.items() if v is not None}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}.",
                              fix="e.g. --set local-steps=20")
        # a string: the typed settings coerce it (so model-channels=16 stays a string)
        given[key.strip()] = value.strip()
    scenario = load_scenario(args.config or DEFAULT_SCENARIO, given)
    num_sites = int(scenario.pop("num-sites", 5))
    if args.sites is not None:
        num_sites = args.sites
    if num_sites < 1:
        raise ConfigError("--sites must be at least 1.", value=num_sites)
    run = RunConfig.from_mapping(scenario, source=str(args.config or DEFAULT_SCENARIO))
    before = _spent_so_far(Path(run.out_dir), run.delta)
    with logging_redirect_tqdm(loggers=[logging.getLogger("fedaug")]):  # bars and lines apart
        strategy = simulate(run, num_sites=num_sites, progress=not args.no_progress,
                            site_decisions=not args.no_site_decisions)
    out = Path(run.out_dir)
    print()
    print(f"fedaug simulate finished: {len(strategy.rounds)} round(s), "
          f"{sum(1 for r in strategy.rounds if r.aggregated)} aggregated.")
    if strategy.ended:
        print(f"  ended early: {strategy.ended}")
    for card in strategy.site_cards():
        spent = card["epsilon"] - before.get(card["site"], 0.0)
        print(f"  {card['site']:<10} ~{card['num-examples']:>7.0f} examples (noisy count)  "
              f"epsilon {spent:.3f} this run, {card['epsilon']:.3f} of {card['budget']:.2f} "
              f"in total (delta {card['delta']:g})")
    for d in [] if args.no_site_decisions else _site_decisions(out):
        if d.get("recommendation") is None:
            print(f"  {d['site']:<10} synthetic data: no decision ({d.get('reason', '')})")
            continue
        lo, hi = d["gain-interval"]
        print(f"  {d['site']:<10} synthetic data: {d['recommendation']} ({d['option']}: "
              f"validation gain in {d.get('metric', 'accuracy')} {d['gain']:+.3f}, "
              f"[{lo:+.3f}, {hi:+.3f}])")
    print(f"  global model : {out / 'global'}  (FedaugPipeline.from_pretrained(...))")
    print(f"  policy       : {out / 'global' / 'policy.json'}  (fedaug augment --policy ...)")
    print(f"  model card   : {out / 'global' / 'model_card.json'}")
    print(f"  sample grid  : {out / 'sample_grid.png'}")
    if (out / AUDIT_FILE).is_file():
        print(f"  privacy audit: {out / AUDIT_FILE}  (membership inference; not for the "
              "model folder)")
    print(f"  site ledgers : {out / 'sites'}/<site>/  (fedaug privacy show --state-dir ...)")
    return 0


def _site_decisions(out: Path) -> list[dict]:
    """The simulated sites' decisions of this run (OUT/site-decisions.json)."""
    import json

    from fedaug.simulations.run import DECISIONS_FILE

    path = out / DECISIONS_FILE
    if not path.is_file():
        return []
    return json.loads(path.read_text(encoding="utf-8")).get("sites", [])


def _spent_so_far(out: Path, delta: float) -> dict[str, float]:
    """Each simulated site's epsilon before this run (its ledger in OUT/sites)."""
    from fedaug.privacy.ledger import LEDGER_FILE, open_ledger_readonly

    spent = {}
    for folder in sorted((out / "sites").glob("*")) if (out / "sites").is_dir() else []:
        if (folder / LEDGER_FILE).is_file():
            spent[folder.name] = open_ledger_readonly(folder).epsilon()
    return spent

"""The ``fedaug`` command line: simulate, generate, privacy show.

Each sub-command is a thin wrapper; the work lives in the packages (imported lazily, so
``fedaug --help`` is instant).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from shared.config import DEFAULT_SAMPLE_STEPS
from shared.errors import FedaugError, run_command

__all__ = ["main"]


def _setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
    ours = logging.getLogger("fedaug")
    ours.handlers[:] = [handler]
    ours.setLevel(logging.DEBUG if verbose else logging.INFO)


def _quiet_libraries(verbose: bool) -> None:
    """Flower logs every round's full config at INFO; keep warnings and errors only."""
    if verbose:
        return
    import flwr  # noqa: F401  (flwr sets its logger level on import)

    for noisy in ("flwr", "diffusers", "opacus"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# -- simulate -----------------------------------------------------------------------------
def _cmd_simulate(args: argparse.Namespace) -> int:
    from shared.config import RunConfig, load_scenario
    from simulations.run import DEFAULT_SCENARIO, simulate

    _quiet_libraries(args.verbose)

    flags = {"num-server-rounds": args.rounds, "epsilon": args.epsilon, "alpha": args.alpha,
             "data": args.data, "out-dir": args.out, "seed": args.seed}
    given = {k: v for k, v in flags.items() if v is not None}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise FedaugError(f"--set expects KEY=VALUE, got {item!r}.",
                              fix="e.g. --set local-steps=20")
        # a string: the typed settings coerce it (so model-channels=16 stays a string)
        given[key.strip()] = value.strip()
    scenario = load_scenario(args.config or DEFAULT_SCENARIO, given)
    num_sites = int(scenario.pop("num-sites", 5))
    if args.sites is not None:
        num_sites = args.sites
    if num_sites < 1:
        raise FedaugError("--sites must be at least 1.", value=num_sites)
    run = RunConfig.from_mapping(scenario, source=str(args.config or DEFAULT_SCENARIO))
    strategy = simulate(run, num_sites=num_sites, progress=not args.no_progress)
    out = Path(run.out_dir)
    print()
    print(f"fedaug simulate finished: {len(strategy.rounds)} round(s), "
          f"{sum(1 for r in strategy.rounds if r.aggregated)} aggregated.")
    if strategy.ended:
        print(f"  ended early: {strategy.ended}")
    for card in strategy.site_cards():
        print(f"  {card['site']:<10} examples {card['num-examples']:>6}  epsilon "
              f"{card['epsilon']:.3f} / {card['budget']:.2f}  (delta {card['delta']:g})")
    print(f"  global model : {out / 'global'}  (UNet2DModel.from_pretrained(..., "
          f"subfolder='unet'))")
    print(f"  model card   : {out / 'global' / 'model_card.json'}")
    print(f"  sample grid  : {out / 'sample_grid.png'}")
    print(f"  site ledgers : {out / 'sites'}/<site>/  (fedaug privacy show --state-dir ...)")
    return 0


# -- generate -----------------------------------------------------------------------------
def _cmd_generate(args: argparse.Namespace) -> int:
    from shared.generator.generate import generate_to_folder

    written = generate_to_folder(args.model, args.out, num_samples=args.num_samples,
                                 label=args.label, seed=args.seed, steps=args.steps)
    print(f"wrote {written['num-samples']} samples: {written['folder']} "
          f"(grid {written['grid']}, arrays {written['npz']})")
    return 0


# -- privacy ------------------------------------------------------------------------------
def _cmd_privacy_show(args: argparse.Namespace) -> int:
    from shared.privacy.ledger import open_ledger_readonly

    ledger = open_ledger_readonly(args.state_dir)
    budget = _read_budget(Path(args.state_dir))
    summary = ledger.summary(budget=budget)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"site {summary['site']}  accountant {summary['mechanism']}  delta "
          f"{summary['delta']:g}  epsilon {summary['epsilon']:.4f}"
          + (f" of budget {budget:g}" if budget else ""))
    print(f"{'run':<32} {'round':>5} {'steps':>6} {'sigma':>8} {'q':>8} {'cum. eps':>9}")
    for e in summary["entries"]:
        print(f"{e['run']:<32} {e['round']:>5} {e['steps']:>6} {e['noise-multiplier']:>8.3f} "
              f"{e['sample-rate']:>8.4f} {e['epsilon']:>9.4f}")
    return 0


def _read_budget(state_dir: Path) -> float | None:
    plan = state_dir / "privacy-plan.json"
    try:
        return float(json.loads(plan.read_text(encoding="utf-8"))["budget"])
    except (OSError, ValueError, KeyError):
        return None


# -- augment ------------------------------------------------------------------------------
def _cmd_augment(args: argparse.Namespace) -> int:
    from shared.augment import Policy
    from shared.augment.runner import augment_path

    path = Path(args.policy)
    if not path.is_file():
        raise FedaugError("Policy file not found.", value=args.policy,
                          fix="Pass a JSON policy (README, Augmentation policies).")
    policy = Policy.from_json(path.read_text(encoding="utf-8"))
    summary = augment_path(policy, args.input, args.out, copies=args.copies, seed=args.seed)
    print(f"wrote {summary['written']} augmented {summary['kind']} from {summary['inputs']} "
          f"inputs to {summary['out']}")
    if "shift-text" in summary:
        print(summary["shift-text"])
    if "preview" in summary:
        print(f"preview grid: {summary['preview']}")
    return 0


# -- evaluate / audit ---------------------------------------------------------------------
def _real_splits(source: str, model_dir: str) -> tuple[Any, Any]:
    from shared.data import load_image_source
    from shared.generator import load_generator

    _, _, config = load_generator(model_dir)
    train = load_image_source(source, split="train", size=config.image_size)
    test = load_image_source(source, split="test", size=config.image_size)
    if train.image_shape[2] != config.channels or train.num_classes != config.num_classes:
        raise FedaugError(
            f"The data {source} ({train.num_classes} classes, {train.image_shape[2]} channel(s)) "
            f"does not match the model ({config.num_classes} classes, {config.channels}).",
            fix="Evaluate a model against the data it was trained on.")
    return train, test


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from shared.evaluate.report import evaluate_generator, small_site_subset

    train, test = _real_splits(args.real, args.model)
    small = small_site_subset(train, args.small_site_size, seed=args.seed)
    report = evaluate_generator(args.model, train, test, num_samples=args.num_samples,
                                small_site=small, seed=args.seed, steps=args.steps,
                                out_dir=args.out)
    u, f = report["utility"], report["fidelity"]
    print(f"TSTR accuracy {u['tstr']['accuracy']:.3f} (AUC {u['tstr']['roc-auc']:.3f}) vs TRTR "
          f"{u['trtr']['accuracy']:.3f} (AUC {u['trtr']['roc-auc']:.3f}); TSTR with "
          f"augmentation {u['tstr+augment']['accuracy']:.3f}")
    g = report["augmentation-gain"]
    print(f"small site ({g['small-site-size']} records, mean of {g['seeds']} seeds): local "
          f"{g['local']['accuracy']:.3f}, +augment {g['local+augment']['accuracy']:.3f}, "
          f"pretrained on synthetic + fine-tuned with augment "
          f"{g['local+augment+synthetic']['accuracy']:.3f}")
    print(f"fidelity: Frechet distance {f['frechet-distance']:.3f}, precision "
          f"{f['precision']:.3f}, recall {f['recall']:.3f} ({f['extractor']}); fine detail "
          f"{f['detail-ratio']:.2f}x the real images'")
    a = report["privacy-audit"]
    print(f"privacy audit: memorization rate {a['memorization-rate']:.3f}, membership-"
          f"inference AUC {a['membership-inference-auc']:.3f}")
    if args.out:
        print(f"report: {Path(args.out) / 'report.json'}, figure: {Path(args.out) / 'report.png'}")
    return 0


def _cmd_audit(args: argparse.Namespace) -> int:
    from server.checkpoint import update_model_card
    from shared.evaluate.report import privacy_audit

    train, test = _real_splits(args.data, args.model)
    result = privacy_audit(args.model, train, test, num_samples=args.num_samples,
                           seed=args.seed)
    if args.write_card:
        update_model_card(args.model, {"privacy-audit": result})
    print(json.dumps(result, indent=2))
    return 0


# -- deployment -------------------------------------------------------------------------
def _run_deploy(command: str, rest: list[str]) -> int:
    """``fedaug server ...`` / ``fedaug client ...``: their own parsers in */deploy.py."""
    _setup_logging(False)
    if command == "server":
        from server.deploy import main as deploy_main
    else:
        from client.deploy import main as deploy_main
    return int(deploy_main(rest) or 0)


# -- parser -------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    from shared.config import settings_help

    p = argparse.ArgumentParser(
        prog="fedaug",
        description="Federated, privacy-preserving data augmentation: sites train a "
        "class-conditional diffusion generator with DP-SGD under Flower and share only "
        "parameters, policies and aggregate metrics.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser(
        "simulate",
        help="simulate a multi-site federation on this machine",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run N simulated sites and the aggregation server in this process. "
        "Defaults come from simulations/default.toml (5 sites, built-in digits, Dirichlet "
        "alpha 0.5, epsilon 10 per site). Writes OUT/global (diffusers folder + "
        "model_card.json), OUT/sample_grid.png and OUT/sites/<site>/ (privacy ledgers).",
        epilog="Every run-config key (use with --set KEY=VALUE or in a --config file):\n"
        + settings_help(),
    )
    s.add_argument("--config", help="scenario TOML file (default: simulations/default.toml)")
    s.add_argument("--sites", type=int, help="number of simulated sites")
    s.add_argument("--rounds", type=int, help="federated rounds")
    s.add_argument("--epsilon", type=float, help="epsilon budget per site")
    s.add_argument("--alpha", type=float, help="Dirichlet label-skew concentration")
    s.add_argument("--data", help="'digits' (built-in), a MedMNIST .npz, or an image folder")
    s.add_argument("--out", help="output folder")
    s.add_argument("--seed", type=int, help="run seed")
    s.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="any other run-config key, e.g. --set local-steps=20 (repeatable)")
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    s.set_defaults(func=_cmd_simulate)

    g = sub.add_parser("generate", help="sample synthetic images from a global model",
                       description="Write PNG files per class, a grid PNG and samples.npz "
                       "(images uint8 N,H,W,C and labels) from a global model folder.")
    g.add_argument("--model", required=True, help="global model folder, e.g. fedaug-out/global")
    g.add_argument("--num-samples", type=int, required=True,
                   help="samples in total (spread evenly over classes unless --label)")
    g.add_argument("--label", type=int, help="only this class index")
    g.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    g.add_argument("--steps", type=int, default=DEFAULT_SAMPLE_STEPS,
                   help=f"DDIM steps (default {DEFAULT_SAMPLE_STEPS})")
    g.add_argument("--out", required=True, help="output folder")
    g.set_defaults(func=_cmd_generate)

    ag = sub.add_parser(
        "augment", help="apply a policy to an image folder or a CSV/TSV of texts",
        description="Write --copies augmented versions of every input. Images keep their class "
        "sub-folders; a preview grid PNG (original, then copies) is written and the golden rule "
        "is checked: intensity distributions of augmented vs original images, per class.")
    ag.add_argument("--policy", required=True, help="policy JSON file")
    ag.add_argument("--in", dest="input", required=True,
                    help="image folder (IN/<class>/*.png|jpg) or a CSV/TSV text table")
    ag.add_argument("--out", required=True, help="output folder (or file for texts)")
    ag.add_argument("--copies", type=int, default=1, help="augmented copies per input (1)")
    ag.add_argument("--seed", type=int, default=0)
    ag.set_defaults(func=_cmd_augment)

    ev = sub.add_parser(
        "evaluate", help="does the global generator help? utility, fidelity, privacy",
        description="Train a small CNN on synthetic samples only and test it on the real test "
        "split (TSTR), also with the augmentation policy, next to the same CNN on the real "
        "training split (TRTR); the gain for a small site (mean of 3 seeds, class-balanced "
        "loss) from "
        "augmentation and from pretraining on the synthetic samples before fine-tuning on "
        "its records; Frechet distance and "
        "precision/recall in the real-data CNN's feature space; the privacy audit. Writes "
        "report.json and report.png into --out.")
    ev.add_argument("--model", required=True, help="global model folder")
    ev.add_argument("--real", required=True,
                    help="real data with train and test splits: 'digits', a MedMNIST .npz, or a "
                    "folder with train/ and test/")
    ev.add_argument("--num-samples", type=int, default=1000, help="synthetic samples (1000)")
    ev.add_argument("--small-site-size", type=int, default=100,
                    help="records of the simulated small site (100)")
    ev.add_argument("--steps", type=int, default=DEFAULT_SAMPLE_STEPS,
                    help=f"DDIM steps ({DEFAULT_SAMPLE_STEPS})")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--out", help="folder for report.json and report.png")
    ev.set_defaults(func=_cmd_evaluate)

    au = sub.add_parser("audit", help="privacy audit of a global generator",
                        description="Memorization rate (distance to closest training record vs "
                        "to held-out records) and a loss-threshold membership-inference attack "
                        "on the diffusion loss (AUC; 0.5 means no leakage).")
    au.add_argument("--model", required=True, help="global model folder")
    au.add_argument("--data", required=True, help="the training data source (with a test split)")
    au.add_argument("--num-samples", type=int, default=500)
    au.add_argument("--seed", type=int, default=0)
    au.add_argument("--write-card", action="store_true", help="store the result in the model card")
    au.set_defaults(func=_cmd_audit)

    # Listed for --help only: main() hands their arguments to server/client deploy.py.
    sub.add_parser(
        "server", help="aggregation server: certificates, hospital keys, the SuperLink",
        add_help=False,
        description="fedaug server {certs,node-key,serve} ... (see docs/deploy.md); "
        "`fedaug server serve --help` for the SuperLink's options. TLS and hospital "
        "authentication are on unless --insecure is given.")
    sub.add_parser(
        "client", help="a hospital's client: the SuperNode with its data, state and budget",
        add_help=False,
        description="fedaug client --superlink HOST:PORT --root-cert ca.crt --key KEY "
        "--data-path DATA --state-dir DIR --site-name NAME --epsilon-budget E (see "
        "docs/deploy.md); `fedaug client --help` lists every option.")

    pr = sub.add_parser("privacy", help="inspect a site's privacy ledger")
    prs = pr.add_subparsers(dest="privacy_command", required=True)
    show = prs.add_parser("show", help="the ledger as a table (or JSON)",
                          description="Show every spending recorded in a site's ledger and "
                          "the epsilon composed over all of it.")
    show.add_argument("--state-dir", required=True, help="the site's state folder")
    show.add_argument("--json", action="store_true", help="one JSON object")
    show.set_defaults(func=_cmd_privacy_show)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fedaug`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["server"], ["client"]):
        return _run_deploy(argv[0], argv[1:])
    parser = _parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    return run_command(lambda: args.func(args), prog="fedaug")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

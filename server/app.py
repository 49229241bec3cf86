"""fedaug ServerApp: build the strategy, run the rounds, publish the global generator."""

from __future__ import annotations

import io
import logging
import time
import uuid
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from fedaug import keys
from fedaug.atomic import atomic_write_bytes
from fedaug.augment import Policy
from fedaug.config import RunConfig
from fedaug.errors import ConfigError
from fedaug.generator import (
    GeneratorConfig,
    build_train_scheduler,
    build_unet,
    make_grid,
    to_uint8,
    write_sample_grid,
)
from fedaug.generator.recipe import resolve_run
from fedaug.generator.spread import draw_images
from fedaug.logs import ensure_logging
from fedaug.privacy import PrivacyLedger
from fedaug.server.checkpoint import (
    STATE_FILE,
    holds_a_run,
    keep_round_checkpoint,
    load_server_state,
    save_server_state,
    write_global,
)
from fedaug.server.strategy import FedAugStrategy, RoundSummary
from fedaug.server.warmup import (
    class_prior,
    collect_central_images,
    pretrain_on_central_images,
    pretrain_on_public_images,
)

__all__ = ["app", "main", "run_server", "load_policy"]

log = logging.getLogger("fedaug.server")
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Flower entry point of a deployment and of ``flwr run .``."""
    ensure_logging()
    run = RunConfig.from_mapping(context.run_config, source="run config")
    if run.server_threads:
        torch.set_num_threads(run.server_threads)
    run_server(grid, run, wait_for_sites_s=run.wait_for_sites_s)


def load_policy(spec: str) -> Policy:
    """The initial global policy: a JSON file path, or the default for ''."""
    if not spec:
        return Policy.default("image")
    path = Path(spec)
    if not path.is_file():
        raise ConfigError("Policy file not found.", value=spec,
                          fix="Pass a JSON policy file (see README, Augmentation policies) "
                          "or leave `policy` empty for the default.")
    return Policy.from_json(path.read_text(encoding="utf-8"))


def _public_pretrain(run: RunConfig, gen_config: GeneratorConfig, unet: Any) -> ArrayRecord:
    """Pretrain ``unet`` in place on patches of public photographs; return its arrays.

    Reads no site's data and sends nothing, so it spends no budget; its draws (which
    patch, which step) use the run seed, as the model's initialisation does.
    """
    t0 = time.perf_counter()
    loss = pretrain_on_public_images(
        unet, build_train_scheduler(gen_config), steps=run.public_steps,
        image_size=gen_config.image_size, channels=gen_config.channels,
        num_classes=gen_config.num_classes, seed=run.seed)
    log.info("public pretraining: %d steps on patches of scikit-learn's sample "
             "photographs (no site data; loss %.4f) in %.0fs", run.public_steps, loss,
             time.perf_counter() - t0)
    return ArrayRecord(unet.state_dict())


def _warm_start(grid: Grid, run: RunConfig, gen_config: GeneratorConfig, unet: Any,
                run_id: str, out: Path, strategy: FedAugStrategy) -> ArrayRecord:
    """Round 0: DP central images from the sites, pretraining on them (see server/warmup.py)."""
    size = min(run.warmup_size or gen_config.image_size, gen_config.image_size)
    (out / "central_images.png").unlink(missing_ok=True)  # never show an earlier run's
    connected = strategy.wait_for_sites(grid)
    if len(connected) < run.min_sites:
        log.warning("warm start: only %d of min-sites=%d sites connected within %.0fs; asking "
                    "those", len(connected), run.min_sites, run.wait_for_sites_s)
    config = ConfigRecord({**gen_config.to_flat(), keys.RUN_ID: run_id,
                           keys.WARMUP_NOISE_MULTIPLIER: run.warmup_noise_multiplier,
                           keys.WARMUP_SIZE: size, keys.WARMUP_SPREAD: run.warmup_spread})
    central = collect_central_images(
        grid, config, num_classes=gen_config.num_classes,
        image_shape=(gen_config.channels, size, size), timeout=run.round_timeout_s)
    means, counts, answers = central.means, central.counts, central.answers
    for a in answers:  # every site that spent on this model goes in the model card
        strategy.record_warm_start(a.node, site=a.site, epsilon=a.epsilon, delta=a.delta,
                                   budget=a.budget, released=a.released)
    if counts is not None:
        strategy.class_prior = class_prior(counts)
        log.info("warm start: class proportions from the noised class counts: %s",
                 ", ".join(f"{p:.3f}" for p in strategy.class_prior))
    if means is not None:
        if size != gen_config.image_size:  # sums of downsampled images: back to full size
            means = torch.nn.functional.interpolate(
                torch.from_numpy(means), size=(gen_config.image_size,) * 2, mode="bilinear",
                align_corners=False).numpy()
        loss = pretrain_on_central_images(unet, build_train_scheduler(gen_config), means,
                                          steps=run.warmup_steps, seed=run.seed,
                                          spread=central.spread,
                                          label_dropout=gen_config.label_dropout,
                                          null_label=gen_config.null_label)
        shown, rows = torch.from_numpy(means), 1
        if central.spread is not None:  # each class's row: its central image, then draws
            draws, _ = draw_images(means, central.spread, per_class=7,
                                   generator=torch.Generator().manual_seed(run.seed))
            shown = torch.cat([shown.unsqueeze(1), draws.reshape(len(means), 7, *means.shape[1:])],
                              dim=1).flatten(0, 1)
            rows = len(means)
        grid_img = make_grid(to_uint8(shown), rows=rows,
                             scale=max(1, 64 // gen_config.image_size))
        buf = io.BytesIO()
        grid_img.save(buf, format="PNG")
        atomic_write_bytes(out / "central_images.png", buf.getvalue())
        log.info("warm start: pretrained %d steps on %s (loss %.4f), see %s", run.warmup_steps,
                 "DP central images" if central.spread is None
                 else "draws from the DP central images and classes' spread",
                 loss, out / "central_images.png")
    return ArrayRecord(unet.state_dict())


def run_server(grid: Grid, run: RunConfig, *, run_id: str | None = None,
               wait_for_sites_s: float = 0.0) -> FedAugStrategy:
    """Run the federation on ``grid`` and publish ``OUT/global`` after every round."""
    run_id = run_id or f"run-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    run, gen_config, class_names, recipe = resolve_run(run)
    if recipe:
        log.info("automatic recipe (docs/dp-recipe.md): %s",
                 ", ".join(f"{k}={v['value']}" for k, v in recipe.items()))
    out = Path(run.out_dir)
    earlier = holds_a_run(out)
    if earlier and not run.resume:
        raise ConfigError(
            f"{out} already holds a run ({', '.join(earlier)}). A second run into it would "
            "spend what is left of every site's budget and replace its model.",
            fix="Continue it with --resume (run config resume=true), or give the new run a "
            "fresh --out (run config out-dir).")
    resumed = load_server_state(out / "server" / STATE_FILE, run=run, gen_config=gen_config)
    if resumed is not None:  # the same run goes on: sites keep its count release and plan
        run_id = resumed["strategy"].get("run-id") or run_id
    elif earlier:
        log.warning("nothing to resume in %s (no completed round): starting a new run, which "
                    "spends on top of what the sites' ledgers already hold", out)
    torch.manual_seed(run.seed)
    unet = build_unet(gen_config)
    policy = load_policy(run.policy)
    settings = run.train_settings()
    t_start = time.perf_counter()

    def card(strategy: FedAugStrategy, rounds_done: int) -> dict[str, Any]:
        return {
            "run-id": run_id,
            "rounds": rounds_done,
            "planned-rounds": run.num_server_rounds,
            "classes": list(class_names),
            "image-shape": [gen_config.image_size, gen_config.image_size, gen_config.channels],
            "policy": strategy.policy.to_dict(),
            "aggregation": run.aggregation,
            "sites": strategy.site_cards(),
            "ended-early": strategy.ended,
            "train-settings": settings.to_mapping(),
            "prediction-type": gen_config.prediction_type,
            "class-prior": (None if strategy.class_prior is None else {
                "proportions": strategy.class_prior,
                "from": "the sites' noised class counts of the warm-up release, summed (a "
                        "post-processing of DP releases); synthetic labels follow it",
            }),
            "recipe-auto": recipe,
            "institution-level-dp": (None if strategy.central_ledger is None else {
                "noise-multiplier": run.central_noise_multiplier,
                "clip-norm": run.central_clip_norm,
                "denominator": float(run.central_denominator or run.min_sites),
                "epsilon": strategy.central_ledger.epsilon(),
                "delta": run.delta,
                "guarantee": "central DP w.r.t. adding or removing one site's whole "
                             "contribution, given a trusted server (no sampling "
                             "amplification claimed: the server chooses the sites)",
            }),
        }

    def on_round(summary: RoundSummary, arrays: ArrayRecord, strategy: FedAugStrategy) -> None:
        write_global(out / "global", arrays, gen_config=gen_config,
                     card=card(strategy, summary.server_round))
        save_server_state(out / "server" / STATE_FILE, run=run, gen_config=gen_config,
                          raw=strategy.latest_raw, strategy=strategy)
        keep_round_checkpoint(out / "checkpoints", summary.server_round, out / "global",
                              keep=run.keep_checkpoints)
        eps = ", ".join(f"{r['site']} {r['epsilon']:.2f}" for r in strategy.site_cards())
        log.info("round %d/%d: %d/%d sites replied, %d aggregated | update norm %.3f | "
                 "epsilon: %s | %.1fs | %.0f kB down, %.0f kB up per site",
                 summary.server_round, run.num_server_rounds, summary.replied,
                 summary.selected, summary.aggregated, summary.update_norm, eps,
                 summary.seconds, summary.bytes_down_per_site / 1e3,
                 summary.bytes_up_per_site / 1e3)

    strategy = FedAugStrategy(
        policy=policy,
        min_sites=run.min_sites,
        fraction_train=run.fraction_train,
        aggregation=run.aggregation,
        max_update_norm=run.max_update_norm,
        ema_decay=run.ema_decay,
        server_momentum=run.server_momentum,
        on_round=on_round,
        seed=run.seed,
        wait_for_sites_s=wait_for_sites_s,
        transfer_dtype=run.transfer_dtype,
        central_noise_multiplier=run.central_noise_multiplier,
        central_clip_norm=run.central_clip_norm,
        central_denominator=float(run.central_denominator or run.min_sites),
        central_ledger=(PrivacyLedger(out / "server", site="server", delta=run.delta)
                        if run.central_noise_multiplier > 0 else None),
        run_id=run_id,
    )
    train_config = ConfigRecord({
        **settings.to_mapping(),
        **gen_config.to_flat(),
        keys.RUN_ID: run_id,
        keys.NUM_ROUNDS: run.num_server_rounds,
    })
    log.info("fedaug run %s: %s, generator %s (%d parameters), policy %d op(s)", run_id,
             run.data, gen_config.block_out_channels,
             sum(p.numel() for p in unet.parameters()), len(policy.ops))
    initial = ArrayRecord(unet.state_dict())
    if resumed is not None and resumed["finished"]:
        strategy.resume_from(resumed["strategy"])
        log.info("the run in %s finished all %d rounds: nothing to do, nothing spent (raise "
                 "num-server-rounds to train further)", out, run.num_server_rounds)
        return strategy
    if resumed is not None:
        initial = resumed["raw"]
        strategy.resume_from(resumed["strategy"])
        log.info("resuming after round %d of %d from %s", strategy.round_offset,
                 run.num_server_rounds, out / "server" / STATE_FILE)
    else:
        if run.public_steps > 0:
            initial = _public_pretrain(run, gen_config, unet)
        if run.warmup_noise_multiplier > 0 and run.warmup_steps > 0:
            initial = _warm_start(grid, run, gen_config, unet, run_id, out, strategy)
    remaining = run.num_server_rounds - strategy.round_offset
    result = strategy.start(grid=grid, initial_arrays=initial, num_rounds=max(remaining, 0),
                            train_config=train_config, timeout=run.round_timeout_s)
    rounds_done = strategy.round_offset + sum(1 for r in strategy.rounds if r.aggregated)
    if rounds_done == 0:
        log.error("No round was aggregated; no global model written.")
        return strategy
    if strategy.published is None and resumed is None:
        strategy.published = result.arrays
    if strategy.published is None:  # resumed with nothing left to do: keep what is there
        return strategy
    published = write_global(out / "global", strategy.published,
                             gen_config=gen_config, card=card(strategy, rounds_done))
    grid_png = out / "sample_grid.png"
    write_sample_grid(published, grid_png, per_class=run.samples_per_class,
                      steps=run.sample_steps, seed=run.seed)
    log.info("done in %.1fs: global model in %s, sample grid %s",
             time.perf_counter() - t_start, published, grid_png)
    return strategy

"""fedaug ClientApp: a thin handler that unpacks the message, trains, packs the reply."""

from __future__ import annotations

import logging

import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedaug import keys
from fedaug.augment import Policy
from fedaug.client.site import resolve_site, spent_epsilon
from fedaug.client.train import run_round
from fedaug.client.warmup import release_class_sums
from fedaug.config import RunConfig, TrainSettings
from fedaug.generator import GeneratorConfig
from fedaug.logs import ensure_logging
from fedaug.wire import to_wire

__all__ = ["app", "handle_train", "handle_warmup"]

log = logging.getLogger("fedaug.client")
app = ClientApp()


@app.train()
def handle_train(msg: Message, context: Context) -> Message:
    """Train the received global generator on this site's data with DP; reply with
    parameters, the policy used, and metrics that are DP releases or post-processings."""
    ensure_logging()
    run = RunConfig.from_mapping(context.run_config, source="run config", ignore_unknown=True)
    cfg = msg.content[keys.CONFIG]
    settings = TrainSettings.from_mapping(dict(cfg), source="the server's train config",
                                          ignore_unknown=True)
    gen_config = GeneratorConfig.from_flat(cfg)
    policy = Policy.from_json(str(cfg[keys.POLICY]))
    site = resolve_site(dict(context.node_config), run)
    if site.torch_threads:
        torch.set_num_threads(site.torch_threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    result = run_round(
        site=site,
        run=run,
        settings=settings,
        gen_config=gen_config,
        global_state=msg.content[keys.ARRAYS].to_torch_state_dict(),
        policy=policy,
        run_id=str(cfg[keys.RUN_ID]),
        server_round=int(cfg[keys.SERVER_ROUND]),
        num_rounds=int(cfg[keys.NUM_ROUNDS]),
        device=device,
    )
    content = RecordDict({
        keys.ARRAYS: to_wire(result.state_dict, run.transfer_dtype),
        keys.METRICS: MetricRecord({k: result.metrics[k] for k in keys.TRAIN_METRICS}),
        keys.CONFIG: ConfigRecord({keys.SITE: site.name, keys.STATUS: result.status,
                                   keys.POLICY: result.policy_json}),
    })
    return Message(content=content, reply_to=msg)


@app.query()
def handle_warmup(msg: Message, context: Context) -> Message:
    """Release this site's noised per-class sums for the server's warm start (once per run)."""
    ensure_logging()
    run = RunConfig.from_mapping(context.run_config, source="run config", ignore_unknown=True)
    cfg = msg.content[keys.CONFIG]
    site = resolve_site(dict(context.node_config), run)
    if site.torch_threads:
        torch.set_num_threads(site.torch_threads)
    gen_config = GeneratorConfig.from_flat(cfg)
    release = release_class_sums(site=site, run=run,
                                 noise_multiplier=float(cfg[keys.WARMUP_NOISE_MULTIPLIER]),
                                 num_classes=gen_config.num_classes,
                                 image_size=gen_config.image_size,
                                 channels=gen_config.channels, run_id=str(cfg[keys.RUN_ID]),
                                 release_size=int(cfg[keys.WARMUP_SIZE]) if keys.WARMUP_SIZE in cfg
                                 else None,
                                 spread=int(cfg.get(keys.WARMUP_SPREAD, 0)) > 0)
    content = RecordDict({
        keys.METRICS: MetricRecord({keys.EPSILON: spent_epsilon(site), keys.DELTA: site.delta,
                                    keys.BUDGET: site.epsilon_budget}),
        keys.CONFIG: ConfigRecord({keys.SITE: site.name, keys.STATUS: keys.STATUS_RELEASED
                                   if release else keys.STATUS_DECLINED}),
    })
    if release is not None:
        content[keys.ARRAYS] = ArrayRecord({k: Array(v) for k, v in release.items()})
    return Message(content=content, reply_to=msg)

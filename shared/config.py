"""Frozen, validated run and training settings built from Flower's run config."""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, TypeVar

from fedaug.errors import ConfigError

#: DDIM steps when sampling. 25 steps give the Frechet distance of 1000-step DDPM to within
#: a few per cent at 35-49x its speed (docs/benchmarks.md, speed.py).
DEFAULT_SAMPLE_STEPS = 25
#: What a site's decision on the synthetic data scores its options by (``fedaug evaluate
#: --site-data --metric``; ``fedaug.evaluate.decision``).
DECISION_METRICS = ("accuracy", "balanced-accuracy")
DEFAULT_DECISION_METRIC = "balanced-accuracy"
#: Cross-validation folds of a site's decision (1 = one held-out part).
DEFAULT_DECISION_FOLDS = 3
#: The loss against local alone a site with every class accepts (0 = the synthetic data
#: must show a gain).
DEFAULT_DECISION_MARGIN = 0.0
#: What the generator's UNet may predict: diffusers' ``prediction_type`` names, and ``"edm"``
#: (Karras et al. 2022's preconditioning, see ``fedaug.generator.model.diffusion_target``).
PREDICTION_TYPES = ("sample", "epsilon", "v_prediction", "edm")

#: The value of a recipe key left to the rules of ``fedaug.generator.recipe`` (the server
#: resolves it from what it knows of the data and the budget; docs/dp-recipe.md).
AUTO = "auto"
#: How synthetic samples spread over the classes: the model card's class prior, or evenly.
LABEL_MODES = ("prior", "balanced")
#: ``noise-levels`` value for timesteps drawn uniformly over the noise schedule.
UNIFORM_NOISE_LEVELS = "uniform"

__all__ = ["AUTO", "RunConfig", "TrainSettings", "NodeConfig", "settings_help"]

T = TypeVar("T", bound="_Settings")


def _opt(default: Any, help: str, *, lo: float | None = None, hi: float | None = None,
         choices: tuple[str, ...] | None = None, lo_open: bool = False,
         kind: type | None = None) -> Any:
    """One setting. ``kind`` is its type where the default is ``AUTO`` (a recipe key: the
    value ``"auto"`` or one of that type)."""
    return field(
        default=default,
        metadata={"help": help, "lo": lo, "hi": hi, "choices": choices, "lo_open": lo_open,
                  "kind": kind},
    )


def _key(name: str) -> str:
    return name.replace("_", "-")


class _Settings:
    """Shared mechanism: kebab-case keys, strict types, every problem listed at once."""

    _FIX: ClassVar[str] = ("Correct the keys above; `fedaug simulate --help` lists every setting "
                           "with its range and default.")

    @classmethod
    def from_mapping(cls: type[T], mapping: Mapping[str, Any], *, source: str,
                     ignore_unknown: bool = False) -> T:
        known = {_key(f.name): f for f in fields(cls)}  # type: ignore[arg-type]
        problems: list[str] = []
        values: dict[str, Any] = {}
        for key, raw in mapping.items():
            f = known.get(key)
            if f is None:
                if not ignore_unknown:
                    close = difflib.get_close_matches(key, list(known), n=1)
                    hint = (f"did you mean {close[0]!r}?" if close
                            else f"known: {', '.join(sorted(known))}")
                    problems.append(f"unknown key {key!r} ({hint})")
                continue
            if f.metadata.get("kind") is not None and raw == AUTO:
                values[f.name] = AUTO
                continue
            value, problem = _coerce(raw, f.metadata.get("kind") or type(f.default))
            if problem:
                if f.metadata.get("kind") is not None:
                    problem += f' or "{AUTO}"'
                problems.append(f"{key}: {problem}, got {raw!r}")
                continue
            problem = _check_range(value, f.metadata)
            if problem:
                problems.append(f"{key}: {problem}, got {raw!r}")
                continue
            values[f.name] = value
        if problems:
            raise ConfigError(
                f"Invalid settings in {source} ({len(problems)} problem(s)): " + "; ".join(problems),
                fix=cls._FIX,
            )
        return cls(**values)

    def to_mapping(self) -> dict[str, Any]:
        return {_key(f.name): getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]

    def replace(self: T, **changes: Any) -> T:
        """Return a copy with ``changes`` (snake_case names), validated again."""
        merged = self.to_mapping()
        merged.update({_key(k): v for k, v in changes.items()})
        return type(self).from_mapping(merged, source="replace()")


def _coerce(raw: Any, kind: type) -> tuple[Any, str | None]:
    if kind is bool:
        if isinstance(raw, bool):
            return raw, None
        if isinstance(raw, str) and raw.lower() in {"true", "false"}:
            return raw.lower() == "true", None
        return None, "must be true or false"
    if isinstance(raw, bool):
        return None, f"must be {kind.__name__}, not a boolean"
    if kind is int:
        if isinstance(raw, int):
            return raw, None
        if isinstance(raw, float) and raw.is_integer():
            return int(raw), None
        if isinstance(raw, str):
            try:
                return int(raw), None
            except ValueError:
                pass
        return None, "must be a whole number"
    if kind is float:
        if isinstance(raw, (int, float)):
            return float(raw), None
        if isinstance(raw, str):
            try:
                return float(raw), None
            except ValueError:
                pass
        return None, "must be a number"
    if kind is str:
        if isinstance(raw, str):
            return raw, None
        return None, "must be a string"
    return raw, None  # pragma: no cover


def _check_range(value: Any, meta: Mapping[str, Any]) -> str | None:
    lo, hi, choices = meta.get("lo"), meta.get("hi"), meta.get("choices")
    if choices is not None and value not in choices:
        return f"must be one of {', '.join(choices)}"
    if lo is not None:
        if meta.get("lo_open") and not value > lo:
            return f"must be > {lo}"
        if not meta.get("lo_open") and value < lo:
            return f"must be >= {lo}"
    if hi is not None and value > hi:
        return f"must be <= {hi}"
    return None


@dataclass(frozen=True)
class TrainSettings(_Settings):
    """What the server asks each site to do in one round (travels in a ConfigRecord).

    Every privacy-relevant limit (the epsilon budget, delta) is NOT here: the site sets
    those itself and the server cannot raise them.
    """

    local_steps: int = _opt(1, "DP-SGD steps per site per round (when local-epochs is 0)",
                            lo=1, hi=100_000)
    local_epochs: float = _opt(0.0, "if > 0: each site runs ceil(local-epochs / q) steps per "
                               "round, that many passes over its own data in expectation "
                               "(a large site takes many subsampled steps, a small one few); "
                               "overrides local-steps", lo=0.0, hi=1000.0)
    batch_size: int = _opt(4096, "expected (Poisson) batch size per step; capped at the "
                           "site's size (4096: full batches on most sites, q=1)",
                           lo=1, hi=1_000_000)
    learning_rate: float = _opt(1e-2, "Adam learning rate", lo=0.0, lo_open=True, hi=1.0)
    max_grad_norm: float = _opt(0.3, "per-example clipping norm C", lo=0.0, lo_open=True)
    noise_multiplicity: int = _opt(2, "diffusion noise draws (and augmented views) averaged inside "
                                   "each example's loss before clipping", lo=1, hi=64)
    noise_multiplier: float = _opt(0.0, "DP noise multiplier sigma; 0 = plan it from the site's "
                                   "budget over the remaining rounds", lo=0.0, hi=1000.0)
    noise_levels: str = _opt(UNIFORM_NOISE_LEVELS, "how DP-SGD draws each view's diffusion "
                             "noise level: uniform (timesteps uniform over the schedule) or "
                             "lognormal:MEAN:STD (log sigma ~ N(MEAN, STD), sigma = "
                             "sqrt((1 - a) / a), the nearest timestep at or above it)")
    augment: bool = _opt(True, "apply the global augmentation policy to each view")
    policy_search_epsilon: float = _opt(0.0, "DP policy search: each site picks one of 6 "
                                        "candidate policies from its data with the exponential "
                                        "mechanism at this epsilon, once per run, charged to its "
                                        "ledger (0 = off: policies stay data-independent)",
                                        lo=0.0, hi=100.0)
    seed: int = _opt(0, "run seed: the public draws only (data split, model initialisation, "
                     "evaluation); every draw of a privacy mechanism is secret", lo=0)

    def __post_init__(self) -> None:
        parse_noise_levels(self.noise_levels)

    def steps_per_round(self, sample_rate: float) -> int:
        """DP-SGD steps a site with Poisson rate ``sample_rate`` runs in one round."""
        if self.local_epochs > 0:
            return max(1, math.ceil(self.local_epochs / sample_rate - 1e-9))
        return self.local_steps


def parse_noise_levels(spec: str) -> tuple[float, float] | None:
    """``None`` for ``"uniform"``, ``(mean, std)`` of log sigma for ``"lognormal:MEAN:STD"``."""
    if spec == UNIFORM_NOISE_LEVELS:
        return None
    parts = spec.split(":") if isinstance(spec, str) else []
    try:
        if len(parts) != 3 or parts[0] != "lognormal":
            raise ValueError
        mean, std = float(parts[1]), float(parts[2])
        if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
            raise ValueError
    except ValueError:
        raise ConfigError("noise-levels must be 'uniform' or 'lognormal:MEAN:STD' with a "
                          "finite MEAN and STD > 0.", value=spec,
                          fix="Use e.g. noise-levels = \"lognormal:0.5:1.4\", or uniform "
                          "(or auto: the recipe's rule).") from None
    return mean, std


def _same(name: str) -> Any:
    """The same option as TrainSettings has: one definition of each training default."""
    f = TrainSettings.__dataclass_fields__[name]
    return field(default=f.default, metadata=f.metadata)


def _auto(name: str) -> Any:
    """TrainSettings' option ``name`` as a recipe key: ``"auto"`` by default (the rule in
    docs/dp-recipe.md decides), or an explicit value in the same range."""
    f = TrainSettings.__dataclass_fields__[name]
    return field(default=AUTO, metadata={**f.metadata, "kind": type(f.default)})


@dataclass(frozen=True)
class RunConfig(_Settings):
    """Every run-config key of the Flower app with its default (mirrors pyproject.toml)."""

    num_server_rounds: int | str = _opt(AUTO, "federated rounds", lo=1, hi=10_000, kind=int)
    fraction_train: float = _opt(1.0, "fraction of sites selected per round", lo=0.0, lo_open=True,
                                 hi=1.0)
    min_sites: int = _opt(2, "fewest sites a round needs; the run ends cleanly below it", lo=1)
    data: str = _opt("digits", "data source in simulation: 'digits' (built-in), a MedMNIST .npz "
                     "or an image folder")
    labels: str = _opt("", "CSV of labels (file, label) when data is a DICOM folder")
    partition: str = _opt("dirichlet", "how simulation splits data over sites",
                          choices=("iid", "dirichlet", "quantity"))
    alpha: float = _opt(0.5, "Dirichlet concentration of the label/quantity skew", lo=0.0,
                        lo_open=True)
    seed: int = _opt(0, "run seed: the public draws only (simulated data split, model "
                     "initialisation, evaluation), never a privacy mechanism's", lo=0)
    out_dir: str = _opt("fedaug-out", "output folder (global model, site state in simulation)")
    resume: bool = _opt(False, "continue the run in out-dir from its last completed round; "
                        "without it a run into a folder that holds one is refused (a second "
                        "run would spend what is left of every budget and replace the model)")
    epsilon: float = _opt(10.0, "per-site epsilon budget in simulation (deployed sites set their "
                          "own with node config epsilon-budget)", lo=0.0, lo_open=True)
    delta: float = _opt(1e-5, "per-site delta in simulation", lo=0.0, lo_open=True, hi=0.1)
    local_steps: int | str = _auto("local_steps")
    local_epochs: float | str = _auto("local_epochs")
    batch_size: int | str = _auto("batch_size")
    learning_rate: float = _same("learning_rate")
    max_grad_norm: float = _same("max_grad_norm")
    noise_multiplicity: int = _same("noise_multiplicity")
    noise_multiplier: float = _same("noise_multiplier")
    noise_levels: str = _auto("noise_levels")
    augment: bool = _same("augment")
    policy_search_epsilon: float = _same("policy_search_epsilon")
    image_size: int = _opt(0, "image size the generator works at (0 = the data's own size)",
                           lo=0, hi=512)
    channels: int = _opt(0, "image channels, 1 or 3 (0 = from the data)", lo=0, hi=3)
    class_names: str = _opt("", "comma-separated class names (empty = from the data); a "
                            "deployed server needs image-size, channels and class-names")
    aggregation: str = _opt("mean", "how site models combine: example-weighted mean, or robust "
                            "coordinate-wise median / trimmed-mean for untrusted federations",
                            choices=("mean", "median", "trimmed-mean"))
    max_update_norm: float = _opt(1000.0, "a reply whose parameters are farther than this (L2) "
                                  "from the global model is excluded as malformed", lo=0.0,
                                  lo_open=True)
    central_noise_multiplier: float = _opt(0.0, "institution-level DP at the server: noise "
                                           "multiplier on the sum of clipped site updates, "
                                           "divided by central-denominator (0 = off; needs "
                                           "warmup-noise-multiplier = 0 and aggregation = "
                                           "mean)", lo=0.0)
    central_clip_norm: float = _opt(1.0, "L2 bound of one site's update under central DP",
                                    lo=0.0, lo_open=True)
    central_denominator: float = _opt(0.0, "central DP's fixed denominator: the expected "
                                      "number of sites per round (0 = min-sites)", lo=0.0)
    transfer_dtype: str = _opt("float32", "dtype of parameters on the wire; float16 halves the "
                               "traffic", choices=("float32", "float16"))
    keep_checkpoints: int = _opt(3, "per-round copies of the global model kept in "
                                 "OUT/checkpoints/round-NNNN (newest first)", lo=0)
    round_timeout_s: float = _opt(600.0, "seconds the server waits for replies in a round; "
                                  "sites that have not replied by then are left out", lo=1.0)
    wait_for_sites_s: float = _opt(60.0, "seconds a deployed server waits for min-sites to "
                                   "connect before a round (0 in fedaug simulate)", lo=0.0)
    policy: str = _opt("", "augmentation policy: a JSON file path, or '' for the default policy")
    model_channels: str = _opt("8,16", "UNet block_out_channels, comma-separated")
    layers_per_block: int = _opt(1, "UNet ResNet layers per block", lo=1, hi=4)
    prediction_type: str = _opt(AUTO, "what the UNet predicts: sample (x0), epsilon, "
                                "v_prediction, or edm (x0 = c_skip * input + c_out * output "
                                "with sigma_data 0.5)", choices=(AUTO, *PREDICTION_TYPES))
    warmup_noise_multiplier: float = _opt(2.0, "DP warm start: each site releases per-class "
                                          "pixel sums with this Gaussian noise multiplier once "
                                          "per run (charged to its ledger; a site raises it so "
                                          "the release spends at most half of the budget it has "
                                          "left); the server pretrains "
                                          "on the resulting central images (0 = off)", lo=0.0)
    warmup_size: int | str = _opt(AUTO, "side of the images whose class sums the warm start "
                                  "releases (0 = the generator's image size); half the side "
                                  "halves the noise per pixel at the same epsilon, and the "
                                  "server upsamples the central images", lo=0, hi=512,
                                  kind=int)
    warmup_spread: int | str = _opt(AUTO, "DP warm start: the most principal components of "
                                    "each class's low-resolution spread the server learns from "
                                    "a second release (second moments of each record's 7x7 "
                                    "deviation from its class's released mean, at the class "
                                    "sums' noise multiplier; the pair together spends at most "
                                    "what the class sums alone may); the pretraining then "
                                    "draws varied images, not one per class (0 = off)", lo=0,
                                    hi=64, kind=int)
    public_steps: int | str = _opt(AUTO, "server pretraining steps on patches of public "
                                   "photographs (scikit-learn's sample images) before the "
                                   "warm start; no site data, no privacy cost (0 = off)",
                                   lo=0, kind=int)
    warmup_steps: int | str = _opt(AUTO, "server pretraining steps on the warm start's images",
                                   lo=0, kind=int)
    label_dropout: float | str = _opt(AUTO, "classifier-free guidance: the probability with "
                                      "which each training example's label is replaced by a "
                                      "null class (sites and the warm start alike; 0 = no "
                                      "null class)", lo=0.0, hi=0.99, kind=float)
    guidance_scale: float | str = _opt(AUTO, "classifier-free guidance scale the published "
                                       "model samples with, u + w (c - u) (1 = none; needs "
                                       "label-dropout > 0)", lo=0.0, hi=100.0, kind=float)
    ema_decay: float = _opt(0.9, "server-side EMA of the global weights over rounds (0 = off)",
                            lo=0.0, hi=0.9999)
    server_momentum: float = _opt(0.0, "server momentum on the sites' mean update (FedAvgM): "
                                  "m = beta m + (mean - global), global += m (0 = plain "
                                  "FedAvg; post-processing, no privacy cost)", lo=0.0,
                                  hi=0.99)
    server_threads: int = _opt(0, "torch threads of a deployed ServerApp (0 = torch's "
                               "default; 1 where it shares the machine with other processes)",
                               lo=0, hi=1024)
    sample_steps: int = _opt(DEFAULT_SAMPLE_STEPS, "DDIM steps when sampling", lo=1, hi=1000)
    samples_per_class: int = _opt(10, "samples per class in the grid written after the run",
                                  lo=1, hi=1000)

    def __post_init__(self) -> None:
        if self.noise_levels != AUTO:
            parse_noise_levels(self.noise_levels)
        if self.central_noise_multiplier > 0 and self.warmup_noise_multiplier > 0:
            raise ConfigError(
                "Central DP protects a site's whole contribution, but the warm start releases "
                "class sums whose size grows with the site's data: the two do not compose.",
                value={"central-noise-multiplier": self.central_noise_multiplier,
                       "warmup-noise-multiplier": self.warmup_noise_multiplier},
                fix="Set warmup-noise-multiplier = 0 with central DP (or central DP off).")
        if self.central_noise_multiplier > 0 and self.aggregation != "mean":
            raise ConfigError("Central DP replaces the aggregation rule; it cannot be combined "
                              "with a robust one.", value=self.aggregation,
                              fix="Set aggregation = mean with central DP.")

    @property
    def auto_keys(self) -> tuple[str, ...]:
        """The recipe keys still ``"auto"`` (none once the server resolved the recipe)."""
        return tuple(k for k, v in self.to_mapping().items() if v == AUTO)

    def train_settings(self) -> TrainSettings:
        """The subset sent to sites each round (of a resolved run config)."""
        unresolved = [k for k in self.auto_keys if k in _TRAIN_KEYS]
        if unresolved:
            raise ConfigError(
                "The run config still has recipe keys set to auto: " + ", ".join(unresolved)
                + ".", fix="Resolve it first: fedaug.generator.recipe.resolve_run(run).")
        mapping = self.to_mapping()
        return TrainSettings.from_mapping(
            {_key(f.name): mapping[_key(f.name)] for f in fields(TrainSettings)},
            source="run config",
        )

    @property
    def channels_tuple(self) -> tuple[int, ...]:
        try:
            chans = tuple(int(c) for c in self.model_channels.split(",") if c.strip())
        except ValueError:
            chans = ()
        if not chans or any(c < 4 or c % 4 for c in chans):
            raise ConfigError(
                "model-channels must be comma-separated multiples of 4 (one per UNet level).",
                value=self.model_channels,
                fix='Use e.g. "32,64".',
            )
        return chans


_TRAIN_KEYS = frozenset(_key(f.name) for f in fields(TrainSettings))


def settings_help(cls: type[_Settings] = RunConfig) -> str:
    """One line per setting: key, default, meaning (for ``--help``)."""
    lines = []
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        note = " (auto: the automatic recipe's rule)" if f.default == AUTO else ""
        lines.append(f"  {_key(f.name):<20} {f.default!r:<14} {f.metadata.get('help', '')}"
                     f"{note}")
    return "\n".join(lines)


@dataclass(frozen=True)
class NodeConfig(_Settings):
    """A site's own settings, from its SuperNode's ``--node-config`` (never the server's).

    A deployed site (one with ``data-path``) must state ``data-path``, ``state-dir``,
    ``epsilon-budget`` and ``delta`` itself; a simulated site (``partition-id`` set by the
    simulation) takes its budget and delta from the simulation's run config, which the
    researcher who owns every simulated site sets.
    """

    data_path: str = _opt("", "the site's training data: a MedMNIST .npz, an image folder, "
                          "or a DICOM folder (with labels)")
    labels: str = _opt("", "CSV of labels (file, label) for a DICOM folder")
    state_dir: str = _opt("", "the site's state folder: privacy ledger, plans, optimizer")
    site_name: str = _opt("", "the site's name in the model card (default: the state "
                          "folder's name)")
    epsilon_budget: float = _opt(0.0, "the site's total epsilon budget over every run",
                                 lo=0.0, lo_open=True)
    delta: float = _opt(0.0, "the site's delta, below 1 / (its number of examples)", lo=0.0,
                        lo_open=True, hi=0.1)
    spending_registry: str = _opt("", "folder of the second record of what each data set "
                                  "spent (default ~/.fedaug/spending; keep it outside the "
                                  "state folder)")
    secure_noise: bool = _opt(True, "draw every privacy mechanism's randomness from ChaCha20 "
                              "keyed by the OS entropy pool (false: torch's generator seeded "
                              "from it)")
    torch_threads: int = _opt(0, "torch threads of this site's ClientApp (0 = torch's "
                              "default; 1 where several processes share the machine's cores)",
                              lo=0, hi=1024)
    partition_id: int = _opt(-1, "simulated partition (set by the simulation)", lo=-1)
    num_partitions: int = _opt(0, "simulated partitions (set by the simulation)", lo=0)

    _FIX: ClassVar[str] = ("Correct the keys above; docs/deploy.md lists every node-config key "
                           "with its meaning.")
    #: keys a deployed site must give itself
    REQUIRED: ClassVar[tuple[str, ...]] = ("data-path", "state-dir", "epsilon-budget", "delta")

    @classmethod
    def from_node_config(cls, mapping: Mapping[str, Any]) -> NodeConfig:
        """Parse and check a node config; raise one ConfigError naming every problem."""
        node = cls.from_mapping(mapping, source="this site's node config")
        if node.partition_id < 0:
            missing = [k for k in cls.REQUIRED if k not in mapping]
            if missing:
                raise ConfigError(
                    "This site's node config lacks " + ", ".join(missing) + ": a deployed "
                    "site states its data, state folder, budget and delta itself.",
                    value=dict(mapping),
                    fix="Start the SuperNode with --node-config \"data-path='/data/site.npz' "
                    "state-dir='/var/lib/fedaug' epsilon-budget=8.0 delta=1e-5\" "
                    "(docs/deploy.md).")
        return node

    @property
    def simulated(self) -> bool:
        """A site of a simulation (a partition of shared data), not a deployed one."""
        return self.partition_id >= 0 and not self.data_path

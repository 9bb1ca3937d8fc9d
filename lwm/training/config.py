"""Typed training configs: `TrainConfig` (the `train` section), `StageConfig` (`stages` items).

A run is a list of stages walked in order (progressive context growth). Fields a stage leaves
None come from `train` / `model`; `stages` empty means one stage built from `train` alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_args

from lwm.config import config_section, parse_fields, parse_section
from lwm.data.config import DataConfig
from lwm.errors import ConfigError
from lwm.layers.rope_scaling import RopeScaling, rope_scaling_from_hf

Schedule = Literal["warmup_cosine", "constant", "warmup_linear"]
SCHEDULES: tuple[str, ...] = get_args(Schedule)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    """Seed of parameter init and of the training RNG stream."""
    steps: int = 100
    """Optimizer steps of the single stage used when `stages` is empty."""
    seq_len: int = 256
    """Tokens per sequence of the single stage used when `stages` is empty."""
    batch_tokens: int = 2048
    """Global batch size in tokens (batch size = batch_tokens // seq_len), single-stage runs."""
    lr: float = 3e-4
    """Peak learning rate."""
    schedule: Schedule = "warmup_cosine"
    """Learning-rate schedule: warmup_cosine, constant (after warmup), or warmup_linear."""
    warmup_steps: int = 10
    """Linear warmup from 0 to `lr` over this many steps (all schedules)."""
    end_lr_ratio: float = 0.1
    """Final learning rate as a fraction of `lr` for the decaying schedules."""
    b1: float = 0.9
    """AdamW beta1."""
    b2: float = 0.95
    """AdamW beta2."""
    eps: float = 1e-8
    """AdamW epsilon."""
    weight_decay: float = 0.1
    """Decoupled weight decay (AdamW), applied to params selected by the mask below."""
    weight_decay_exclude: tuple[str, ...] = ("norm", "embed")
    """Regexes on "/"-joined param paths (e.g. `blocks/0/attn_norm/scale`) that get no decay."""
    decay_1d_params: bool = False
    """Whether vectors (norm scales, biases) are decayed; False excludes every 1-D param."""
    clip_norm: float = 1.0
    """Global gradient-norm clipping threshold (0 = off)."""
    grad_accum: int = 1
    """Microbatches per optimizer step (the global batch is split along the batch axis)."""
    text_loss_weight: float = 0.5
    """Weight of the text cross-entropy term (LWM: 0.5)."""
    vision_loss_weight: float = 0.5
    """Weight of the vision cross-entropy term (LWM: 0.5). Weights are renormalized over the terms
    present in a batch, so a text-only batch trains on the plain text loss."""
    reset_optimizer: bool = True
    """At a stage boundary, start the next stage with fresh optimizer state (else keep it)."""
    save_every: int = 100
    """Checkpoint every this many global steps (stage ends and SIGTERM always save)."""
    keep: int = 3
    """Newest checkpoints kept in `<workdir>/checkpoints`."""
    async_save: bool = True
    """Write checkpoints in the background while training continues."""
    log_every: int = 10
    """Write a metrics.jsonl record every this many steps (1 = every step)."""
    peak_flops: float = 0.0
    """Peak FLOP/s of the whole mesh for MFU; 0 = measure once with a matmul benchmark."""
    progress_bar: bool = True
    """Show a tqdm progress bar on process 0."""
    eval_every: int = 0
    """Held-out loss (text / vision split, as the train loss) every this many steps and at each
    stage's last step, logged as `eval_*` metrics; 0 = off. Needs `data.eval_fraction` or
    `data.eval_path` (the synthetic source has its own held-out stream)."""
    eval_batches: int = 4
    """Batches (of the stage's batch shape) per evaluation: the same held-out batches each time."""
    tensorboard: bool = False
    """Also write metrics as TensorBoard event files under `<workdir>/tensorboard`."""
    wandb_project: str = ""
    """Also log metrics to this Weights & Biases project (needs `wandb`; `WANDB_MODE=offline`
    keeps the run local); "" = off."""
    init_from: str = ""
    """Start stage 1 from the params of this lwm checkpoint (converted HF/LWM model or a training
    workdir) instead of random init; fresh optimizer; ignored once the workdir has a checkpoint."""
    init_from_skip: tuple[str, ...] = ()
    """Regexes on "/"-joined param paths left at their fresh init when using `init_from`."""

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"train.schedule {self.schedule!r}: expected one of {SCHEDULES}")
        for name in ("steps", "seq_len", "batch_tokens", "grad_accum", "save_every", "keep"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.log_every < 1:
            raise ConfigError(f"train.log_every must be >= 1, got {self.log_every}")
        if self.eval_every < 0 or self.eval_batches < 1:
            raise ConfigError(
                f"train.eval_every must be >= 0 and train.eval_batches >= 1, got "
                f"{self.eval_every}, {self.eval_batches}"
            )
        if self.text_loss_weight < 0 or self.vision_loss_weight < 0:
            raise ConfigError("train.text_loss_weight / vision_loss_weight must be >= 0")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> TrainConfig:
        schedule = (d or {}).get("schedule", SCHEDULES[0]) if not isinstance(d, cls) else None
        if schedule is not None and schedule not in SCHEDULES:  # the message train always gave
            raise ConfigError(f"train.schedule {schedule!r}: expected one of {SCHEDULES}")
        return parse_section(cls, d, "train")


LEGACY_INHERIT = {
    "seq_len": 0,
    "steps": 0,
    "batch_tokens": 0,
    "rope_theta": 0.0,
    "max_sequence_length": 0,
    "lr": 0.0,
    "schedule": "",
    "warmup_steps": -1,
    "grad_accum": 0,
}
"""How older configs spelled "inherit" per field; read as None (same behaviour)."""


@dataclasses.dataclass(frozen=True)
class StageConfig:
    """One context stage. Every field is optional: None inherits from `train` / `model` (older
    configs' 0, 0.0, "" and -1 spellings of inherit, see LEGACY_INHERIT, are read as None)."""

    seq_len: int | None = None
    """Tokens per sequence in this stage (None = train.seq_len)."""
    steps: int | None = None
    """Optimizer steps in this stage (None = train.steps)."""
    batch_tokens: int | None = None
    """Global batch size in tokens (None = train.batch_tokens); must be a multiple of seq_len."""
    rope_theta: float | None = None
    """RoPE base frequency for this stage (None = model.rope_theta). LWM: 1M, 10M, 10M, 25M,
    50M."""
    rope_scaling: dict[str, Any] | None = None
    """RoPE scaling for this stage in transformers' `rope_parameters` spelling without the theta,
    e.g. `{"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096}`
    (`lwm.layers.rope_scaling.rope_scaling_from_hf`); `{"rope_type": "default"}` removes the
    model's scaling; None = model.rope_scaling. Context-extension recipes set it with
    rope_theta."""
    max_sequence_length: int | None = None
    """Model max_sequence_length for this stage (None = max(model value, seq_len))."""
    lr: float | None = None
    """Peak learning rate (None = train.lr)."""
    schedule: Schedule | None = None
    """Learning-rate schedule (None = train.schedule)."""
    warmup_steps: int | None = None
    """Warmup steps (None = train.warmup_steps; 0 = no warmup)."""
    reset_optimizer: bool | None = None
    """Fresh optimizer state at the start of this stage (None = train.reset_optimizer)."""
    mesh: dict[str, int] | None = None
    """This stage's own mesh sizes (e.g. more `sp` for longer context); None = the run's mesh."""
    grad_accum: int | None = None
    """Microbatches per step (None = train.grad_accum)."""
    data: dict[str, Any] | None = None
    """Overrides of `config.data` fields for this stage only (e.g. `min_example_len` to read only
    long tasks, `position_stretch` for PoSE-style positions); None = the run's data section."""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, index: int = 0) -> StageConfig:
        """Builds `stages[index]` (see `lwm.config.parse_section`); a legacy inherit value is
        read as None, and a set value must be in range (one-line errors)."""
        where = f"stages[{index}]"
        raw = dict(d.to_dict() if hasattr(d, "to_dict") else (d or {}))
        for name, legacy in LEGACY_INHERIT.items():
            if name in raw and type(raw[name]) is not bool and raw[name] == legacy:
                raw[name] = None
        values = parse_fields(cls, raw, where)
        for name in ("seq_len", "steps", "batch_tokens", "max_sequence_length", "grad_accum"):
            if values.get(name) is not None and values[name] < 1:
                raise ConfigError(f"{where}.{name} must be >= 1 (or None to inherit)")
        for name in ("rope_theta", "lr"):
            if values.get(name) is not None and not values[name] > 0:
                raise ConfigError(f"{where}.{name} must be > 0 (or None to inherit)")
        if values.get("warmup_steps") is not None and values["warmup_steps"] < 0:
            raise ConfigError(f"{where}.warmup_steps must be >= 0 (or None to inherit)")
        if values.get("data") is not None:
            values["data"] = parse_fields(DataConfig, values["data"], f"{where}.data")
        return cls(**values)


@dataclasses.dataclass(frozen=True)
class ResolvedStage:
    """A stage with every inherited field filled in (`data`: the run's data section with the
    stage's overrides applied)."""

    index: int
    seq_len: int
    steps: int
    batch_size: int
    rope_theta: float
    max_sequence_length: int
    lr: float
    schedule: Schedule
    warmup_steps: int
    end_lr_ratio: float
    reset_optimizer: bool
    mesh: dict[str, int] | None
    grad_accum: int
    data: DataConfig = DataConfig(source="synthetic")
    rope_scaling: RopeScaling | None = None
    """The model's RoPE scaling in this stage (None: plain RoPE)."""

    @property
    def batch_tokens(self) -> int:
        return self.batch_size * self.seq_len


def _pick(value: Any, inherited: Any) -> Any:
    return inherited if value is None else value


def resolve_stages(
    train: TrainConfig,
    stages: Sequence[Mapping[str, Any]] | None,
    model_rope_theta: float,
    model_max_len: int,
    data: DataConfig | None = None,
    *,
    model_rope_scaling: RopeScaling | None = None,
) -> list[ResolvedStage]:
    """Fills each stage from `train`, the model (its RoPE theta, scaling and max length) and the
    run's `data` (the trainer's default: synthetic); validates shapes and schedules."""
    data = DataConfig(source="synthetic") if data is None else data
    raw = [StageConfig.from_dict(s, i) for i, s in enumerate(stages or [])] or [StageConfig()]
    out = []
    for i, s in enumerate(raw):
        seq_len = _pick(s.seq_len, train.seq_len)
        batch_tokens = _pick(s.batch_tokens, train.batch_tokens)
        if batch_tokens % seq_len:
            raise ConfigError(
                f"stages[{i}]: batch_tokens {batch_tokens} is not a multiple of seq_len {seq_len}"
            )
        schedule = _pick(s.schedule, train.schedule)
        if schedule not in SCHEDULES:
            raise ConfigError(f"stages[{i}].schedule {schedule!r}: expected one of {SCHEDULES}")
        steps = _pick(s.steps, train.steps)
        max_len = _pick(s.max_sequence_length, max(model_max_len, seq_len))
        out.append(
            ResolvedStage(
                index=i,
                seq_len=seq_len,
                steps=steps,
                batch_size=batch_tokens // seq_len,
                rope_theta=_pick(s.rope_theta, model_rope_theta),
                max_sequence_length=max_len,
                lr=_pick(s.lr, train.lr),
                schedule=schedule,
                warmup_steps=_pick(s.warmup_steps, train.warmup_steps),
                end_lr_ratio=train.end_lr_ratio,
                reset_optimizer=_pick(s.reset_optimizer, train.reset_optimizer),
                mesh=s.mesh,
                grad_accum=_pick(s.grad_accum, train.grad_accum),
                data=data.replace(**s.data) if s.data else data,
                rope_scaling=_stage_rope_scaling(
                    s.rope_scaling, model_rope_scaling, model_max_len, i
                ),
            )
        )
        stretch = out[-1].data.position_stretch
        if stretch * seq_len > out[-1].max_sequence_length:
            raise ConfigError(
                f"stages[{i}]: position_stretch {stretch:g} x seq_len {seq_len} exceeds "
                f"max_sequence_length {out[-1].max_sequence_length}"
            )
        if out[-1].max_sequence_length < seq_len:
            raise ConfigError(
                f"stages[{i}]: max_sequence_length {out[-1].max_sequence_length} < seq_len "
                f"{seq_len}"
            )
        if out[-1].batch_size % out[-1].grad_accum:
            raise ConfigError(
                f"stages[{i}]: batch size {out[-1].batch_size} not divisible by grad_accum "
                f"{out[-1].grad_accum}"
            )
    return out


def _stage_rope_scaling(
    raw: dict[str, Any] | None, inherited: RopeScaling | None, max_len: int, index: int
) -> RopeScaling | None:
    """A stage's `rope_scaling` dict as a RopeScaling; an `original_max_position_embeddings`
    left out is the model's own max_sequence_length (the context it was trained for)."""
    if raw is None:
        return inherited
    where = f"stages[{index}].rope_scaling"
    if "rope_theta" in raw:
        raise ConfigError(f"{where}.rope_theta: set stages[{index}].rope_theta instead")
    return rope_scaling_from_hf(raw, max_position_embeddings=max_len, where=where)


def default_train_section(**overrides: Any):
    """`config.train` as an ml_collections ConfigDict with every TrainConfig field (defaults
    replaced by `overrides`), so any field can be set with `--config.train.<field>=...`."""
    return config_section(TrainConfig, "train", **overrides)


def stage_section(**fields: Any):
    """One `config.stages` entry with every StageConfig field present (so overrides work)."""
    return config_section(StageConfig, "stage", **fields)

"""VQGAN training loop: L1/L2 reconstruction + codebook + commitment (+ optional patch-GAN).

`train_vqgan(vqgan_cfg, train_cfg, data_cfg, workdir)` trains on frames of videos/images, writes
`<workdir>/checkpoints/` (the project `Checkpointer`), `<workdir>/metrics.jsonl` (one JSON object
per log/eval line) and `<workdir>/samples/step_<N>.png` (held-out originals above their
reconstructions). It runs on the LM trainer's step loop and hook events (`lwm.training.loop`),
with its own hooks (`lwm.video.vqgan_hooks`). Running again on the same workdir resumes from the
latest checkpoint; the batch of each step depends only on (seed, step), so a resumed run matches
an uninterrupted one.
SIGTERM / SIGINT end the loop after the current step with an eval and a checkpoint of that step,
then `VQGANInterrupted` (`lwm vqgan train` exits 75, as `lwm train` does).
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from lwm.checkpoint import Checkpointer
from lwm.config import parse_section
from lwm.errors import ConfigError, LwmError
from lwm.failed_start import undo_failed_start
from lwm.training.hooks import Hooks
from lwm.training.loop import run_loop
from lwm.training.signals import Interrupted, StopRequest
from lwm.training.workdir import check_workdir_usable
from lwm.video.config import VQGANConfig
from lwm.video.frame_data import FrameBank, load_frame_bank
from lwm.video.quantizer import perplexity
from lwm.video.vqgan import VQGAN, init_vqgan, make_decode_fn, make_encode_fn, numpy_init
from lwm.video.vqgan_checkpoint import (
    config_from_metadata,
    load_state_tree,
    state_tree,
    vqgan_metadata,
)
from lwm.video.vqgan_hooks import FrameBatches, VQGANHooks, VQGANStage
from lwm.video.vqgan_losses import (
    PatchDiscriminator,
    generator_adv_loss,
    hinge_d_loss,
    psnr,
    reconstruction_loss,
)
from lwm.workdir_lock import workdir_lock


@dataclasses.dataclass(frozen=True)
class VQGANTrainConfig:
    steps: int = 10000
    """Total optimizer steps."""
    batch_size: int = 16
    """Frames per step (sharded over all devices of the mesh)."""
    learning_rate: float = 2e-4
    """Peak Adam learning rate (linear warmup, then cosine decay to 10%)."""
    warmup_steps: int = 200
    """Linear warmup steps."""
    b1: float = 0.5
    """Adam beta1 (0.5 as is usual for VQGANs)."""
    b2: float = 0.9
    """Adam beta2."""
    grad_clip: float = 1.0
    """Global gradient-norm clip (0 = off)."""
    l1_weight: float = 1.0
    """Weight of the L1 reconstruction loss."""
    l2_weight: float = 1.0
    """Weight of the L2 (MSE) reconstruction loss."""
    gan: bool = False
    """Add a patch-GAN (hinge) loss and train a discriminator."""
    gan_weight: float = 0.1
    """Weight of the generator's adversarial loss."""
    gan_start_step: int = 2000
    """Step at which the adversarial loss switches on (the discriminator trains from then too)."""
    disc_channels: int = 64
    """Discriminator base width."""
    disc_layers: int = 3
    """Stride-2 discriminator layers."""
    seed: int = 0
    """Seed of the init and of the batch order."""
    log_every: int = 50
    """Steps between metrics lines."""
    eval_every: int = 500
    """Steps between held-out evaluations (PSNR, codebook usage) and sample grids."""
    save_every: int = 1000
    """Steps between checkpoints (the final step is always saved)."""
    keep: int = 3
    """Checkpoints kept."""
    grid_frames: int = 8
    """Held-out frames shown in each sample grid."""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VQGANTrainConfig:
        return parse_section(cls, d, "train")


@dataclasses.dataclass(frozen=True)
class FrameDataConfig:
    paths: tuple[str, ...] = ()
    """Videos, images or directories of them."""
    fps: float = 0.0
    """Frames sampled per second of video (0 = every frame)."""
    max_frames_per_video: int = 0
    """Cap per video, evenly spaced (0 = no cap)."""
    holdout_fraction: float = 0.1
    """Last fraction of each video's frames held out for evaluation."""
    flip: bool = True
    """Random horizontal mirroring of training frames."""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FrameDataConfig:
        return parse_section(cls, d, "data")


class VQGANInterrupted(Interrupted):
    """Training stopped on SIGTERM / SIGINT after evaluating and checkpointing `step`; running
    again on the same workdir resumes there."""

    def __init__(self, step: int, signal_name: str):
        self.step, self.signal_name = step, signal_name
        super().__init__(
            f"VQGAN training interrupted by {signal_name or 'a stop request'} at step {step}: "
            "checkpoint saved; rerun the same command to continue"
        )


def _schedule(cfg: VQGANTrainConfig):
    return optax.warmup_cosine_decay_schedule(
        0.0,
        cfg.learning_rate,
        max(1, cfg.warmup_steps),
        max(cfg.steps, cfg.warmup_steps + 1),
        end_value=0.1 * cfg.learning_rate,
    )


def _tx(cfg: VQGANTrainConfig, lr) -> optax.GradientTransformation:
    parts = [optax.clip_by_global_norm(cfg.grad_clip)] if cfg.grad_clip > 0 else []
    return optax.chain(*parts, optax.adam(lr, b1=cfg.b1, b2=cfg.b2))


@functools.lru_cache(maxsize=8)
def make_train_step(cfg: VQGANTrainConfig):
    """The jitted step `(model, opt, disc, disc_opt, frames uint8, key, step) -> metrics`,
    cached per config so runs of one config share compiles."""

    @nnx.jit
    def step_fn(model, opt, disc, disc_opt, frames, key, step):
        x = frames.astype(jnp.float32) / 127.5 - 1.0
        adv_on = (step >= cfg.gan_start_step).astype(jnp.float32) if cfg.gan else 0.0

        def loss_fn(model):
            recon, codes, z, aux = model(x)
            rec = reconstruction_loss(x, recon, l1_weight=cfg.l1_weight, l2_weight=cfg.l2_weight)
            loss = rec + aux["vq_loss"]
            g_adv = jnp.zeros(())
            if cfg.gan:
                g_adv = generator_adv_loss(disc(recon))
                loss = loss + adv_on * cfg.gan_weight * g_adv
            return loss, (recon, z, aux, rec, g_adv)

        (loss, (recon, z, aux, rec, g_adv)), grads = nnx.value_and_grad(loss_fn, has_aux=True)(
            model
        )
        opt.update(model, grads)
        metrics = {
            "loss": loss,
            "rec_loss": rec,
            "codebook_loss": aux["codebook_loss"],
            "commitment_loss": aux["commitment_loss"],
            "perplexity": aux["perplexity"],
            "psnr": jnp.mean(psnr(x, recon)),
        }
        q = model.quantizer
        q.update_usage(aux["counts"])
        metrics["restarted_codes"] = q.restart_dead_codes(z.reshape(-1, z.shape[-1]), key)
        if cfg.gan:
            fake = jax.lax.stop_gradient(recon)

            def d_loss_fn(disc):
                return hinge_d_loss(disc(x), disc(fake)) * adv_on

            d_loss, d_grads = nnx.value_and_grad(d_loss_fn)(disc)
            disc_opt.update(disc, d_grads)
            metrics["d_loss"] = d_loss
            metrics["g_adv_loss"] = g_adv
        return metrics

    return step_fn


def evaluate(model: VQGAN, frames: np.ndarray, *, batch_size: int = 32) -> dict[str, float]:
    """Held-out PSNR (dB, mean over frames), codebook usage (fraction of codes used) and
    perplexity of the code histogram."""
    if len(frames) == 0:
        return {}
    encode, decode = make_encode_fn(model), make_decode_fn(model)
    batch_size = min(batch_size, len(frames))
    k = model.cfg.codebook_size
    counts = np.zeros(k, np.float64)
    scores = []
    for i in range(0, len(frames), batch_size):
        chunk = frames[i : i + batch_size]
        n = len(chunk)
        if n < batch_size:  # pad: one compiled shape
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - n, 0)])
        codes = np.asarray(encode(chunk))[:n]
        recon = np.asarray(decode(codes))
        scores.append(np.asarray(psnr(jnp.asarray(frames[i : i + n]), jnp.asarray(recon))))
        counts += np.bincount(codes.reshape(-1), minlength=k)
    return {
        "eval_psnr": float(np.mean(np.concatenate(scores))),
        "eval_usage": float(np.mean(counts > 0)),
        "eval_perplexity": float(perplexity(jnp.asarray(counts, jnp.float32))),
    }


@functools.lru_cache(maxsize=8)
def _cached_tx(cfg: VQGANTrainConfig) -> optax.GradientTransformation:
    # One tx object per config: the optimizer's static graph then compares equal across runs,
    # so a resumed (or repeated) run reuses the compiled step instead of recompiling.
    return _tx(cfg, _schedule(cfg))


class _Run:
    """The mutable pieces of a run (model, optimizers, discriminator)."""

    def __init__(self, vcfg: VQGANConfig, tcfg: VQGANTrainConfig):
        self.model = init_vqgan(vcfg, tcfg.seed)
        self.opt = nnx.Optimizer(self.model, _cached_tx(tcfg), wrt=nnx.Param)
        self.disc = self.disc_opt = None
        if tcfg.gan:
            self.disc = numpy_init(
                lambda: PatchDiscriminator(
                    vcfg.in_channels, tcfg.disc_channels, tcfg.disc_layers, rngs=nnx.Rngs(0)
                ),
                tcfg.seed + 1,
            )
            self.disc_opt = nnx.Optimizer(self.disc, _cached_tx(tcfg), wrt=nnx.Param)

    def parts(self) -> dict[str, nnx.Module]:
        out = {"model": self.model, "opt": self.opt}
        if self.disc is not None:
            out.update(disc=self.disc, disc_opt=self.disc_opt)
        return out

    def state(self) -> dict:
        return {k: state_tree(v) for k, v in self.parts().items()}

    def load(self, tree: dict) -> None:
        for k, v in self.parts().items():
            load_state_tree(v, tree[k])


def _placement(run: _Run, mesh, batch_size: int):
    """Replicates the run's state over `mesh`; returns how to place a batch (split over all
    mesh devices)."""
    if mesh is None or mesh.size == 1:
        return jnp.asarray
    from jax.sharding import NamedSharding, PartitionSpec

    if batch_size % mesh.size:
        raise ConfigError(f"train.batch_size {batch_size} not divisible by {mesh.size} devices")
    replicated = NamedSharding(mesh, PartitionSpec())
    for part in run.parts().values():
        nnx.update(part, jax.device_put(nnx.state(part), replicated))
    batch = NamedSharding(mesh, PartitionSpec(tuple(mesh.axis_names)))
    return lambda frames: jax.device_put(frames, batch)


def train_vqgan(
    vcfg: VQGANConfig,
    tcfg: VQGANTrainConfig,
    dcfg: FrameDataConfig,
    workdir: str | pathlib.Path,
    *,
    bank: FrameBank | None = None,
    show_progress: bool = True,
    stop_after: int | None = None,
    max_seconds: float | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> dict[str, float]:
    """Trains (or resumes) in `workdir`; returns the last metrics. `bank` overrides data loading
    (tests); `stop_after` ends the run early at that step (simulates an interruption);
    `max_seconds` ends it (with an eval and a checkpoint) once that much time has passed.
    `mesh`: data parallelism over all its devices (params replicated, batch split).
    One process per workdir (`lwm.workdir_lock`); a run that fails before its first step (bad
    data, another preset) removes what it created."""
    check_workdir_usable(workdir)
    primary = jax.process_index() == 0
    with workdir_lock(workdir, "lwm vqgan train", enabled=primary) as root:
        with undo_failed_start(root, enabled=primary) as created:
            return _train_in(
                vcfg,
                tcfg,
                dcfg,
                root,
                created.keep,
                bank=bank,
                show_progress=show_progress,
                stop_after=stop_after,
                max_seconds=max_seconds,
                mesh=mesh,
            )


def _train_in(
    vcfg: VQGANConfig,
    tcfg: VQGANTrainConfig,
    dcfg: FrameDataConfig,
    workdir: pathlib.Path,
    started: Callable[[], None],
    *,
    bank: FrameBank | None,
    show_progress: bool,
    stop_after: int | None,
    max_seconds: float | None,
    mesh: jax.sharding.Mesh | None,
) -> dict[str, float]:
    """`train_vqgan` in its locked workdir; `started()` is called after the first step."""
    if bank is None:
        bank = load_frame_bank(
            dcfg.paths,
            resolution=vcfg.resolution,
            fps=dcfg.fps,
            max_frames_per_video=dcfg.max_frames_per_video,
            holdout_fraction=dcfg.holdout_fraction,
        )
    if bank.train.shape[1:] != (vcfg.resolution, vcfg.resolution, 3):
        raise LwmError(f"frames {bank.train.shape[1:]} do not match resolution {vcfg.resolution}")
    run = _Run(vcfg, tcfg)
    ckpt = Checkpointer(workdir / "checkpoints", keep=tcfg.keep, async_save=True)
    try:
        start = _resume(run, ckpt, vcfg, tcfg, workdir)
        step_fn = make_train_step(tcfg)
        put = _placement(run, mesh, tcfg.batch_size)
        grid_src = bank.eval if len(bank.eval) else bank.train
        grid_src = grid_src[np.linspace(0, len(grid_src) - 1, tcfg.grid_frames).astype(int)]

        def step(run: _Run, batch: tuple[int, np.ndarray]) -> tuple[_Run, dict]:
            at, frames = batch
            key = jax.random.fold_in(jax.random.key(tcfg.seed + 1), at)
            frames = put(frames)
            m = step_fn(run.model, run.opt, run.disc, run.disc_opt, frames, key, jnp.asarray(at))
            return run, m

        def held_out() -> tuple[dict[str, float], np.ndarray, np.ndarray]:
            recon = make_decode_fn(run.model)(make_encode_fn(run.model)(grid_src))
            return evaluate(run.model, bank.eval), grid_src, np.asarray(recon)

        def metadata(at: int) -> dict:
            train, data = dataclasses.asdict(tcfg), {"paths": list(dcfg.paths)}
            return vqgan_metadata(vcfg, train=train, step=at, data=data)

        end = tcfg.steps if stop_after is None else min(tcfg.steps, stop_after)
        with open(workdir / "metrics.jsonl", "a") as mf, StopRequest() as stop:
            vq = VQGANHooks(
                tcfg,
                workdir=workdir,
                metrics_file=mf,
                ckpt=ckpt,
                metadata=metadata,
                state=run.state,
                evaluate=held_out,
                stop_requested=lambda: stop.requested,
                max_seconds=max_seconds,
                show_progress=show_progress,
            )
            hooks = Hooks()
            hooks.add(lambda _: started())  # from here a failure keeps the files (a resume)
            vq.attach(hooks)
            batches = FrameBatches(bank, tcfg.seed, tcfg.batch_size, dcfg.flip, start)
            run_loop(
                VQGANStage(start, end),
                run,
                batches,
                step,
                hooks,
                step=start,
                stop=lambda: vq.stopping,
            )
    finally:
        ckpt.close()  # waits for the last save
    if vq.stopped_at is not None:
        raise VQGANInterrupted(vq.stopped_at, stop.name)
    return vq.last


def _resume(
    run: _Run, ckpt: Checkpointer, vcfg: VQGANConfig, tcfg: VQGANTrainConfig, workdir
) -> int:
    """Loads the workdir's latest checkpoint into `run` (refusing another preset or GAN
    setting); returns the step to continue from (0: a fresh run)."""
    latest = ckpt.latest_step()
    if latest is None:
        return 0
    meta = ckpt.metadata(latest)
    saved = config_from_metadata(meta, str(workdir))
    if saved != vcfg:
        raise LwmError(
            f"{workdir}: holds a VQGAN of preset {saved.name!r} that differs from the "
            f"config ({vcfg.name!r}); use a new workdir"
        )
    if bool(meta.get("train", {}).get("gan")) != tcfg.gan:
        raise LwmError(f"{workdir}: checkpoint and config disagree on train.gan")
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), run.state())
    tree, meta, _ = ckpt.restore(latest, abstract_state=abstract)
    run.load(tree)
    return int(meta["step"])

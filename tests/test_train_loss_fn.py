"""The trainer's loss seam (`Trainer(spec, workdir, loss_fn=...)`) and its advancing rng: short
real runs with a custom loss against the default one."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lwm.checkpoint import Checkpointer
from lwm.config import load_config
from lwm.training.loss import lm_loss
from lwm.training.run_spec import parse_run
from lwm.training.train_state import rng_data
from lwm.training.trainer import Trainer

OVERRIDES = [
    "train.steps=2",
    "train.log_every=1",
    "train.save_every=2",
    "train.peak_flops=1e12",
    "train.progress_bar=False",
    "train.async_save=False",
]


def _run(workdir, loss_fn=lm_loss):
    spec = parse_run(load_config("train_debug", OVERRIDES))
    Trainer(spec, workdir, loss_fn=loss_fn, log=lambda _: None).run()
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines]


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    wd = tmp_path_factory.mktemp("default")
    return wd, _run(wd)


def test_scaled_loss_scales_loss_and_gradients(default_run, tmp_path):
    def doubled(model, micro, norm, key):
        loss, sums = lm_loss(model, micro, norm, key)
        return 2.0 * loss, sums

    _, base = default_run
    got = _run(tmp_path, doubled)
    first, want = got[0], base[0]  # the same params and batch: only the loss differs
    np.testing.assert_allclose(first["loss"], 2 * want["loss"], rtol=1e-5)
    np.testing.assert_allclose(first["grad_norm"], 2 * want["grad_norm"], rtol=1e-4)
    np.testing.assert_allclose(first["text_loss"], want["text_loss"], rtol=1e-6)


def test_loss_on_a_subset_of_tokens(default_run, tmp_path):
    def first_half(model, micro, norm, key):
        half = micro["positions"].shape[1] // 2
        keep = (jnp.arange(micro["loss_mask"].shape[1]) < half)[None, :]
        return lm_loss(model, {**micro, "loss_mask": micro["loss_mask"] * keep}, norm, key)

    _, base = default_run
    got = _run(tmp_path, first_half)
    # Divided by the whole batch's token count: about half the loss, and a different gradient.
    assert 0.3 * base[0]["loss"] < got[0]["loss"] < 0.7 * base[0]["loss"]
    assert got[0]["grad_norm"] != pytest.approx(base[0]["grad_norm"], rel=1e-3)


def test_rng_advances_with_the_step(default_run):
    wd, _ = default_run
    with Checkpointer(wd / "checkpoints", async_save=False) as ckpt:
        state, _, _ = ckpt.restore(2, subtree="rng")
    key = jax.random.key(0)  # train.seed 0
    for step in (0, 1):
        key = jax.random.fold_in(key, step)
    np.testing.assert_array_equal(np.asarray(state), np.asarray(jax.random.key_data(key)))
    assert not np.array_equal(np.asarray(state), np.asarray(rng_data(0)))

"""The trainer's data: a stage's training iterator and its held-out (eval) iterator, from the
source named by `config.data.source` (`synthetic`, default, or a built `dataset`)."""

from __future__ import annotations

from collections.abc import Iterator

from lwm.errors import ConfigError
from lwm.models.config import ModelConfig
from lwm.training.config import ResolvedStage
from lwm.training.run_spec import RunSpec

EVAL_SEED = 2**31
"""Added to `train.seed` for the eval stream: the synthetic source's held-out batches (and the
order held-out records are batched in) never share a seed with a training stage's."""


def _iterator(spec: RunSpec, st: ResolvedStage, mesh, model: ModelConfig, *, seed: int, subset):
    data = st.data
    if data.source == "synthetic":
        from lwm.training.synthetic_data import make_synthetic_iterator

        return make_synthetic_iterator(
            seq_len=st.seq_len,
            global_batch_size=st.batch_size,
            mesh=mesh,
            seed=seed,
            vocab_size=model.vocab_size,
            vision_vocab_size=model.vision_vocab_size,
            vision_fraction=data.vision_fraction,
        )
    try:
        from lwm.data.loader import make_train_iterator
    except ImportError as e:
        raise ConfigError(f"data.source {data.source!r} needs lwm.data.loader ({e})") from None
    if subset == "eval":  # a fixed sample of the held-out records, read on demand
        data = data.replace(prefetch=0, num_epochs=0, shuffle=True)
    return make_train_iterator(
        data,
        seq_len=st.seq_len,
        global_batch_size=st.batch_size,
        mesh=mesh,
        seed=seed,
        subset=subset,
        name=f"stages[{st.index}] {'eval ' if subset == 'eval' else ''}data",
    )


def make_data_iterator(spec: RunSpec, st: ResolvedStage, mesh, model: ModelConfig) -> Iterator:
    """Stage `st`'s training batches (global arrays), with get_state / set_state."""
    return _iterator(spec, st, mesh, model, seed=spec.train.seed + 1000 * st.index, subset="train")


def make_eval_iterator(spec: RunSpec, st: ResolvedStage, mesh, model: ModelConfig) -> Iterator:
    """Stage `st`'s held-out batches: the validation split of the dataset (`data.eval_fraction`
    or `data.eval_path`), or a synthetic stream with seeds no training stage uses."""
    return _iterator(spec, st, mesh, model, seed=EVAL_SEED + spec.train.seed, subset="eval")

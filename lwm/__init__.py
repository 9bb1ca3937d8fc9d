"""lwm: million-token world models in JAX (LLaMA over interleaved video and text, RingAttention)."""

__version__ = "0.1.0"


def load_model(checkpoint_dir, *, mesh=None, step=None, overrides=None):
    """Loads an lwm model checkpoint (converted or trained) as a callable Flax NNX module.

    `model(tokens_bt).logits` on int32 tokens `[B, T]` are the text logits `[B, T, V]`. See
    `lwm.models.io.load_model` for the arguments.
    """
    from lwm.models.io import load_model as _load_model

    return _load_model(checkpoint_dir, mesh=mesh, step=step, overrides=overrides)

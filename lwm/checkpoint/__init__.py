"""The project's one checkpoint system: atomic orbax checkpoints with JSON metadata (no pickle).

The names below are imported lazily, so `lwm.checkpoint.policy` (used by CLI parsers) does not
pull in jax and orbax.
"""

from typing import Any

__all__ = [
    "CheckpointError",
    "Checkpointer",
    "UnreadableStepError",
    "abstract_like",
    "read_checkpoint_metadata",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from lwm.checkpoint import checkpointer

        return getattr(checkpointer, name)
    raise AttributeError(f"module 'lwm.checkpoint' has no attribute {name!r}")

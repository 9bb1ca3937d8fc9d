"""The project's one checkpoint system: atomic orbax checkpoints with JSON metadata (no pickle)."""

from lwm.checkpoint.checkpointer import (
    Checkpointer,
    CheckpointError,
    abstract_like,
    read_checkpoint_metadata,
)

__all__ = ["CheckpointError", "Checkpointer", "abstract_like", "read_checkpoint_metadata"]

"""Training on the `debug` model preset: a few CPU-seconds, synthetic data, one stage."""

import ml_collections

from lwm.models.presets import base_config
from lwm.training.config import default_train_section


def get_config():
    config = base_config("debug")
    config.model.max_sequence_length = 1024
    config.train = default_train_section(
        steps=20,
        seq_len=128,
        batch_tokens=1024,
        lr=3e-3,
        warmup_steps=5,
        save_every=10,
        log_every=1,
    )
    config.stages = []
    config.data = ml_collections.ConfigDict(dict(source="synthetic", vision_fraction=0.0))
    return config

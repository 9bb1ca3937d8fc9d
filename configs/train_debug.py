"""Training on the `debug` model preset: a few CPU-seconds, one stage.

Synthetic data by default; a dataset made by `lwm data build` with
`--config.data.source=dataset --config.data.path=DIR` (every `config.data` field is there to
override; see lwm/data/config.py). The model's vocabulary must hold the tokenizer's pieces
(`--config.model.vocab_size=N`).
"""

from lwm.data.config import default_data_config
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
    config.data = default_data_config()
    config.data.source = "synthetic"
    return config

"""Progressive context growth on the `debug` preset: 256 -> 512 -> 1024 tokens with RoPE theta
rising (LWM: 32K -> ... -> 1M, theta 1M -> 50M, in miniature). The last stage has its own mesh
with more sequence parallelism, as long stages would on a pod."""

import ml_collections

from lwm.models.presets import base_config
from lwm.training.config import default_train_section, stage_section


def get_config():
    config = base_config("debug")
    config.model.max_sequence_length = 256
    config.model.rope_theta = 10_000.0
    config.mesh = ml_collections.ConfigDict(dict(dp=1, fsdp=-1, tp=2, sp=2))
    config.train = default_train_section(
        lr=3e-3, warmup_steps=2, save_every=4, log_every=1, reset_optimizer=True
    )
    config.stages = [
        stage_section(seq_len=256, steps=6, batch_tokens=2048, rope_theta=1e6),
        stage_section(
            seq_len=512, steps=6, batch_tokens=2048, rope_theta=1e7, max_sequence_length=512
        ),
        stage_section(
            seq_len=1024,
            steps=6,
            batch_tokens=2048,
            rope_theta=2.5e7,
            max_sequence_length=1024,
            mesh=dict(dp=1, fsdp=-1, tp=2, sp=4),
        ),
    ]
    config.data = ml_collections.ConfigDict(dict(source="synthetic", vision_fraction=0.0))
    return config

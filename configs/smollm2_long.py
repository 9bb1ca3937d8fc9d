"""SmolLM2-135M-Instruct grown from its 8K context to 32K tokens in two stages, as context-extension
recipes do: stage 1 raises RoPE theta (100K -> 1M) at 16K tokens; stage 2 keeps that theta and adds
YaRN (factor 2 over the 16K of stage 1) at 32K tokens. Both stages start from the previous one's
params; stage 1 from the converted model (`train.init_from`).

  lwm convert from-gguf SmolLM2-135M-Instruct.Q4_1.gguf ckpt/smollm2
  lwm data build --input my/text --tokenizer ckpt/smollm2 --out my/smollm2-data
  lwm train --config configs/smollm2_long.py --workdir runs/smollm2-32k \
      --init-from ckpt/smollm2 --config.data.path=my/smollm2-data

Sized for one 8-GPU node (sequence parallel ring over 8 devices in stage 2); `lwm plan --config
configs/smollm2_long.py --devices 8` checks a pod before it runs. The learning rate, steps and
batch are a starting point, not a tuned recipe.
"""

import ml_collections

from lwm.data.config import default_data_config
from lwm.models.presets import base_config
from lwm.training.config import default_train_section, stage_section

BATCH_TOKENS = 2**19  # 512K tokens per batch in both stages


def get_config():
    config = base_config("smollm2-135m")
    config.model.attention.backend = "ring"
    config.model.attention.layout = "zigzag"
    config.model.scan_layers = True  # one compiled layer, not 30
    config.model.remat_policy = "full"
    config.model.dtype = "bfloat16"
    config.mesh = ml_collections.ConfigDict(dict(dp=1, fsdp=-1, tp=1, sp=4))
    config.train = default_train_section(
        init_from="",  # --init-from ckpt/smollm2 (the converted model)
        lr=3e-5,
        schedule="constant",
        warmup_steps=20,
        weight_decay=0.0,
        clip_norm=1.0,
        reset_optimizer=True,
        save_every=100,
        log_every=10,
    )
    config.stages = [
        stage_section(
            seq_len=16_384,
            steps=200,
            batch_tokens=BATCH_TOKENS,
            rope_theta=1_000_000.0,
            max_sequence_length=16_384,
            mesh=dict(dp=1, fsdp=-1, tp=1, sp=4),
        ),
        stage_section(
            seq_len=32_768,
            steps=200,
            batch_tokens=BATCH_TOKENS,
            rope_theta=1_000_000.0,
            rope_scaling=dict(
                rope_type="yarn", factor=2.0, original_max_position_embeddings=16_384
            ),
            max_sequence_length=32_768,
            mesh=dict(dp=1, fsdp=-1, tp=1, sp=8),
        ),
    ]
    # Long documents split into seq_len chunks, short ones packed (segment ids keep them apart).
    config.data = default_data_config()
    config.data.path = "my/smollm2-data"  # set with --config.data.path
    config.data.long_examples = "split"
    return config

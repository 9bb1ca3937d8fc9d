"""LWM-Text-1M's recipe: LLaMA-2 7B grown from 4K to 1M tokens of context in five stages.

From the LWM paper (Liu et al. 2024, "World Model on Million-Length Video And Language With
RingAttention", arXiv 2402.08268, the LWM-Text training-stage table) and LWM's
scripts/run_train_text.sh. Every stage starts from the previous one's end (stage 1 from LLaMA-2 7B
through `train.init_from`); RoPE theta rises with the context; the batch stays at ~4M tokens, so
the number of sequences falls as they grow, and devices move from fsdp onto `sp` (ring attention).
The meshes are for the 256-chip TPU v4 pod slice (v4-512) LWM trained on: `lwm plan --config
configs/lwm_text_1m.py --devices 256`.

  lwm convert from-hf Llama-2-7b-hf llama2-7b          # or --init-from another checkpoint
  lwm train --config configs/lwm_text_1m.py --workdir runs/lwm-text-1m --init-from llama2-7b \
      --config.data.path=books-tokenized

Where the paper gives no number, the comment beside the value says so.
"""

import ml_collections

from lwm.data.config import default_data_config
from lwm.models.presets import base_config
from lwm.training.config import default_train_section, stage_section

BATCH_TOKENS = 4 * 2**20  # paper: 4M tokens per batch in every text stage

# (seq_len, RoPE theta, steps, warmup, mesh dp/fsdp/tp/sp) per stage. Steps = total tokens / 4M
# (paper: 4.8B, 12B, 12B, 3B, 1.8B tokens). Meshes (not LWM's: its mesh_dim put 4-8 devices on tp,
# which in lwm needs 49-97 GiB per device, `lwm plan`): 16K tokens per device in every stage, one
# sequence per fsdp shard, the rest on sp, so devices move from fsdp onto sp as sequences grow.
STAGES = (
    (2**15, 1_000_000.0, 1200, 100, dict(dp=1, fsdp=-1, tp=1, sp=2)),
    (2**17, 10_000_000.0, 3000, 200, dict(dp=1, fsdp=-1, tp=1, sp=8)),
    (2**18, 10_000_000.0, 3000, 200, dict(dp=1, fsdp=-1, tp=1, sp=16)),
    (2**19, 25_000_000.0, 720, 50, dict(dp=1, fsdp=-1, tp=1, sp=32)),
    (2**20, 50_000_000.0, 450, 25, dict(dp=1, fsdp=-1, tp=1, sp=64)),
)


def get_config():
    # LLaMA-2 7B with LWM's eps 1e-6, scanned + rematted blocks, ring attention (presets.py).
    config = base_config("lwm-text-32k")
    config.mesh = ml_collections.ConfigDict(dict(dp=1, fsdp=-1, tp=1, sp=2))
    config.train = default_train_section(
        init_from="llama2-7b",  # `lwm convert from-hf` of meta-llama/Llama-2-7b-hf (4K context)
        lr=4e-5,  # paper: 4e-5 in every text stage
        schedule="constant",  # paper: constant after the linear warmup
        b1=0.9,
        b2=0.95,  # not in the paper; LWM's tux AdamW default
        weight_decay=0.1,  # LWM's run_train_text.sh
        clip_norm=1.0,  # not in the paper; LWM's tux default
        reset_optimizer=True,  # each stage: a new run from the last one's params
        text_loss_weight=1.0,
        vision_loss_weight=0.0,
        save_every=100,  # not in the paper
        keep=2,
        log_every=10,
        peak_flops=275e12 * 256,  # TPU v4: 275 TFLOP/s bf16 per chip, 256 chips
    )
    config.stages = [
        stage_section(
            seq_len=seq_len,
            steps=steps,
            warmup_steps=warmup,
            batch_tokens=BATCH_TOKENS,
            rope_theta=theta,
            max_sequence_length=seq_len,
            mesh=mesh,
        )
        for seq_len, theta, steps, warmup, mesh in STAGES
    ]
    # Books (the paper filters Books3 to documents of each stage's length); a dataset written by
    # `lwm data build`. Long documents are split into seq_len chunks, short ones packed.
    config.data = default_data_config()
    config.data.path = "books-tokenized"  # set with --config.data.path
    config.data.long_examples = "split"
    return config

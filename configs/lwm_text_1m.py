"""LWM-Text-1M's recipe: LLaMA-2 7B grown from 4K to 1M tokens of context in five stages.

From the LWM paper (Liu et al. 2024, "World Model on Million-Length Video And Language With
RingAttention", arXiv 2402.08268, the "LWM-Text Training Stages" table, Table 11 in v4) and LWM's
scripts/run_train_text.sh (an example run: it gives weight decay, not the paper's stages). Every
stage starts from the previous one's end (paper: "Initialize From" LLaMA-2 7B, then Text-32K ...
Text-512K; stage 1 through `train.init_from`); RoPE theta rises with the context; the batch stays
at 4M tokens, so the number of sequences falls as they grow, and devices move from fsdp onto `sp`
(ring attention).
The meshes are for the 256-chip TPU v4 pod slice (v4-512) LWM trained on: `lwm plan --config
configs/lwm_text_1m.py --devices 256`.

  lwm convert from-hf Llama-2-7b-hf llama2-7b          # or --init-from another checkpoint
  lwm train --config configs/lwm_text_1m.py --workdir runs/lwm-text-1m --init-from llama2-7b \
      --config.data.path=books-tokenized

Where the paper gives no number, the comment beside the value says so. One deliberate deviation:
the paper trains every stage in float32; lwm's preset keeps float32 params and AdamW state but
computes in bfloat16 (what the meshes below are sized for); `--config.model.dtype=float32` for
LWM's precision, at about twice the activation memory.
"""

import ml_collections

from lwm.data.config import default_data_config
from lwm.models.presets import base_config
from lwm.training.config import default_train_section, stage_section

BATCH_TOKENS = 4 * 2**20  # paper: 4M tokens per batch in every text stage (= 128 x 32K sequences)

# (seq_len, RoPE theta, steps, warmup, mesh dp/fsdp/tp/sp) per stage. Paper: sequence length 2^15,
# 2^17, 2^18, 2^19, 2^20; RoPE theta 1M, 10M, 10M, 25M, 50M (also LWM's README theta table for
# 128K-1M); total steps 1200, 3000, 3000, 720, 450 (total tokens 4.8B, 12B, 12B, 3B, 1.8B / 4M);
# LR warmup steps 100, 200, 200, 50, 25; TPU v4-512 in every stage. Meshes are not LWM's: the
# paper's mesh sharding (dp,fsdp,tp,sp) is 1,-1,4,1 / 1,-1,8,1 / 1,-1,16,1 / 1,-1,16,2 / 1,-1,16,4,
# and an earlier `lwm plan` with 4-8 devices on tp gave 49-97 GiB per device. Here: 16K tokens per
# device in every stage, one sequence per fsdp shard, the rest on sp, so devices move from fsdp
# onto sp as sequences grow.
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
        init_from="llama2-7b",  # paper: from LLaMA-2 7B; `lwm convert from-hf` of Llama-2-7b-hf
        lr=4e-5,  # paper: 4e-5 in every text stage
        schedule="constant",  # paper: LR schedule "Constant" (after the linear warmup)
        b1=0.9,  # not in the paper; tux's AdamW default (tux/optimizers.py), which LWM trains with
        b2=0.95,  # not in the paper; tux's AdamW default
        weight_decay=0.1,  # not in the paper; LWM's scripts/run_train_text.sh
        clip_norm=1.0,  # not in the paper; tux's AdamW default (clip_gradient)
        # each stage a new run from the last one's params (paper: "Initialize From" the previous
        # stage; whether AdamW state carried over is not published)
        reset_optimizer=True,
        text_loss_weight=1.0,
        vision_loss_weight=0.0,
        save_every=100,  # not in the paper (bookkeeping, no effect on training)
        keep=2,  # not in the paper (bookkeeping)
        log_every=10,  # not in the paper (bookkeeping)
        # v4-512 (paper) = 256 chips; 275 TFLOP/s bf16 per chip: Google's v4 spec, not the paper
        peak_flops=275e12 * 256,
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
    # Books (paper: each stage trains on a filtered version of Books3); a dataset written by
    # `lwm data build`. Long documents are split into seq_len chunks, short ones packed.
    config.data = default_data_config()
    config.data.path = "books-tokenized"  # set with --config.data.path
    config.data.long_examples = "split"
    return config

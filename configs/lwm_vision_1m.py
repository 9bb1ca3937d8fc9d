"""LWM / LWM-Chat-1M's recipe: LWM-Text-1M extended to video and images in five stages.

From the LWM paper (Liu et al. 2024, arXiv 2402.08268, the vision-language training-stage table)
and LWM's scripts/run_train_vision_text.sh. Stage 1 starts from LWM-Text-1M (`train.init_from`: a
text checkpoint, so the vision embedding and head start fresh: lwm's text -> vision extension);
RoPE theta stays at 50M; the batch is ~8M tokens; the loss is LWM's 0.5 text + 0.5 vision. Data
mixes text, image-text and video-text (the 1K stage images, 8K short videos, the chat stages
long videos with model-generated QA plus text chat). Meshes are for the 512-chip TPU v4 pod slice
(v4-1024) LWM used: `lwm plan --config configs/lwm_vision_1m.py --devices 512`.

  lwm convert from-lwm params::LWM-Text-1M-Jax/params lwm-text-1m --config lwm-text-1m
  lwm train --config configs/lwm_vision_1m.py --workdir runs/lwm-1m --init-from lwm-text-1m

Where the paper gives no number, the comment beside the value says so.
"""

import ml_collections

from lwm.data.config import default_data_config
from lwm.models.presets import base_config
from lwm.training.config import default_train_section, stage_section

BATCH_TOKENS = 8 * 2**20  # paper: 8M tokens per batch in every vision-language stage

# (seq_len, steps, warmup, peak lr, schedule, mesh, data path). Steps = total tokens / 8M
# (paper: 363B, 107B, 10B, 3.5B, 0.4B tokens). Meshes: 16K tokens per device (what fits a v4
# chip's 32 GiB in lwm, `lwm plan`), sequences split over sp once a stage has fewer than 512.
STAGES = (
    # 1K: image-text pairs (LAION-2B-en / COYO-700M in the paper) at 256 tokens per image.
    (2**10, 45000, 1000, 6e-4, "warmup_cosine", dict(dp=1, fsdp=-1, tp=1, sp=1), "vl-1k"),
    # 8K: short videos (WebVid10M / InternVid10M) and images, still mixed with text.
    (2**13, 14000, 500, 6e-4, "warmup_cosine", dict(dp=1, fsdp=-1, tp=1, sp=1), "vl-8k"),
    # Chat 32K / 128K / 1M: long videos with model-generated QA, text chat (UltraChat) and the
    # earlier stages' data; lr 8e-5 (as in run_train_vision_text.sh), min lr = max lr: constant.
    (2**15, 1200, 100, 8e-5, "constant", dict(dp=1, fsdp=-1, tp=1, sp=2), "vl-chat-32k"),
    (2**17, 450, 50, 8e-5, "constant", dict(dp=1, fsdp=-1, tp=1, sp=8), "vl-chat-128k"),
    (2**20, 50, 5, 8e-5, "constant", dict(dp=1, fsdp=-1, tp=1, sp=64), "vl-chat-1m"),
)


def get_config():
    # LWM-7B: LLaMA-2 7B + 8448 vision codes (8192 VQGAN codes + specials), theta 50M (presets).
    config = base_config("lwm-1m")
    config.mesh = ml_collections.ConfigDict(dict(dp=1, fsdp=-1, tp=1, sp=1))
    config.train = default_train_section(
        init_from="lwm-text-1m",  # LWM-Text-1M converted (from-lwm / from-hf) or its workdir
        lr=6e-4,
        end_lr_ratio=0.1,  # paper: min lr 6e-5 for 6e-4 in the 1K/8K stages
        weight_decay=0.1,  # LWM's run_train_vision_text.sh
        b2=0.95,  # not in the paper; LWM's tux AdamW default
        clip_norm=1.0,  # not in the paper; LWM's tux default
        reset_optimizer=True,
        text_loss_weight=0.5,  # LWM: equal weights on the text and vision terms
        vision_loss_weight=0.5,
        save_every=500,  # not in the paper
        keep=2,
        log_every=10,
        peak_flops=275e12 * 512,  # TPU v4: 275 TFLOP/s bf16 per chip, 512 chips
    )
    config.stages = [
        stage_section(
            seq_len=seq_len,
            steps=steps,
            warmup_steps=warmup,
            lr=lr,
            schedule=schedule,
            batch_tokens=BATCH_TOKENS,
            rope_theta=50_000_000.0,  # paper: 50M in every vision-language stage
            max_sequence_length=seq_len,
            mesh=mesh,
            data=dict(path=path),  # a `lwm data build` dataset per stage (--config.stages.i.data)
        )
        for seq_len, steps, warmup, lr, schedule, mesh, path in STAGES
    ]
    config.data = default_data_config()
    config.data.long_examples = "truncate"  # videos longer than a stage keep their first chunk
    return config

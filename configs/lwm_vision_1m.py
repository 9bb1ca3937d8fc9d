"""LWM / LWM-Chat-1M's recipe: LWM-Text-1M extended to video and images in five stages.

From the LWM paper (Liu et al. 2024, arXiv 2402.08268, the "LWM / LWM-Chat Training Stages"
table, Table 13 in v4; its data table) and LWM's code (lwm/train.py: the loss; the example
scripts/run_train_vision_text.sh: weight decay). Stage 1 starts from LWM-Text-1M (paper:
"Initialize From Text-1M"; `train.init_from`: a text checkpoint, so the vision embedding and head
start fresh: lwm's text -> vision extension), each later stage from the previous one; RoPE theta
stays at 50M; 8M tokens per batch; the loss is LWM's 0.5 text + 0.5 vision. Data (paper): 1K
image-text pairs, 8K short videos (both mixed with 16% OpenLLaMA text), then video instruction
data with filtered Books3 text at 32K / 128K / 1M. Meshes are for the 512-chip TPU v4 pod
slice (v4-1024, paper) LWM used: `lwm plan --config configs/lwm_vision_1m.py --devices 512`.

Where the paper gives no number, the comment beside the value says so. Like lwm_text_1m.py this
computes in bfloat16 (float32 params and AdamW state) where the paper trains in float32:
`--config.model.dtype=float32` for LWM's precision.

  lwm convert from-lwm params::LWM-Text-1M-Jax/params lwm-text-1m --config lwm-text-1m
  lwm train --config configs/lwm_vision_1m.py --workdir runs/lwm-1m --init-from lwm-text-1m
"""

import ml_collections

from lwm.data.config import default_data_config
from lwm.models.presets import base_config
from lwm.training.config import default_train_section, stage_section

BATCH_TOKENS = 8 * 2**20  # paper: 8M tokens per batch in every vision-language stage (= 8192 x 1K)

# (seq_len, steps, warmup, peak lr, schedule, mesh, data path). Paper: sequence length 2^10, 2^13,
# 2^15, 2^17, 2^20; total steps 45000, 14000, 1200, 450, 50 (total tokens 363B, 107B, 10B, 3.5B,
# 0.4B / 8M); LR warmup steps 1000, 500, 100, 50, 5; max LR 6e-4, 6e-4, 8e-5, 8e-5, 8e-5; min LR
# 6e-5, 6e-5, 8e-5, 8e-5, 8e-5; schedule "Cosine" in every stage. Meshes are not LWM's (paper:
# 1,-1,1,1 / 1,-1,1,1 / 1,-1,4,1 / 1,-1,8,1 / 1,-1,16,4): 16K tokens per device (what fits a v4
# chip's 32 GiB in lwm, `lwm plan`), sequences split over sp once a stage has fewer than 512.
STAGES = (
    # 1K: image-text pairs (LAION-2B-en + COYO-700M in the paper) at 256 VQGAN tokens per image.
    (2**10, 45000, 1000, 6e-4, "warmup_cosine", dict(dp=1, fsdp=-1, tp=1, sp=1), "vl-1k"),
    # 8K: short videos (paper: WebVid10M + an InternVid10M subset, 30 frames at 4 FPS), with text.
    (2**13, 14000, 500, 6e-4, "warmup_cosine", dict(dp=1, fsdp=-1, tp=1, sp=1), "vl-8k"),
    # Chat 32K / 128K / 1M: video instruction data (paper: Valley-Instruct-73K + Video-ChatGPT-100K,
    # up to 4000 frames at 1M) and Books3 text. Paper: cosine from 8e-5 to a min of 8e-5, i.e.
    # constant after warmup; lwm's end_lr_ratio is one per run, so these stages say "constant".
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
        lr=6e-4,  # paper: max LR of the 1K / 8K stages (each stage sets its own below)
        end_lr_ratio=0.1,  # paper: min lr 6e-5 for 6e-4 in the 1K/8K stages
        weight_decay=0.1,  # not in the paper; LWM's scripts/run_train_vision_text.sh
        b2=0.95,  # not in the paper; tux's AdamW default (tux/optimizers.py), which LWM trains with
        clip_norm=1.0,  # not in the paper; tux's AdamW default (clip_gradient); b1 0.9 likewise
        reset_optimizer=True,  # not published whether AdamW state carried over between stages
        text_loss_weight=0.5,  # LWM's lwm/train.py: loss = 0.5 * (vision_loss + text_loss)
        vision_loss_weight=0.5,
        save_every=500,  # not in the paper (bookkeeping, no effect on training)
        keep=2,  # not in the paper (bookkeeping)
        log_every=10,  # not in the paper (bookkeeping)
        # v4-1024 (paper) = 512 chips; 275 TFLOP/s bf16 per chip: Google's v4 spec, not the paper
        peak_flops=275e12 * 512,
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

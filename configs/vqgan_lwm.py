"""LWM's VQGAN: 256x256 -> 16x16 codes, codebook 8192 x 64, widths 128 * (1, 2, 2, 4, 6),
2 residual blocks per encoder level, 3 per decoder level (LWM's num_res_blocks + 1), 2 in each
middle stage, GroupNorm(32, eps 1e-6), no attention. Same architecture as LWM's `lwm/vqgan.py`
defaults, so LWM's released weights load into it:
`lwm convert vqgan-from-lwm vqgan OUT_DIR`.

`lwm vqgan train --config vqgan_lwm --workdir DIR --config.data.paths="('videos/',)"`
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.vqgan = ml_collections.ConfigDict(
        dict(
            name="vqgan_lwm",
            resolution=256,
            in_channels=3,
            base_channels=128,
            channel_multipliers=(1, 2, 2, 4, 6),
            num_res_blocks=2,
            decoder_res_blocks=3,
            mid_res_blocks=2,
            norm_groups=32,
            codebook_size=8192,
            embed_dim=64,
            commitment_weight=0.25,
            codebook_weight=1.0,
            usage_decay=0.99,
            dead_code_threshold=0.03,
            dtype="float32",
        )
    )
    c.train = ml_collections.ConfigDict(
        dict(
            steps=200_000,
            batch_size=64,
            learning_rate=1e-4,
            warmup_steps=2000,
            b1=0.5,
            b2=0.9,
            grad_clip=1.0,
            l1_weight=1.0,
            l2_weight=1.0,
            gan=True,
            gan_weight=0.1,
            gan_start_step=20_000,
            disc_channels=64,
            disc_layers=3,
            seed=0,
            log_every=100,
            eval_every=2000,
            save_every=5000,
            keep=3,
            grid_frames=8,
        )
    )
    c.data = ml_collections.ConfigDict(
        dict(paths=(), fps=1.0, max_frames_per_video=0, holdout_fraction=0.02, flip=True)
    )
    c.mesh = ml_collections.ConfigDict(dict(dp=-1, fsdp=1, tp=1, sp=1))
    return c

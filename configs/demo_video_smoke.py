"""`lwm demo --video` in seconds (for tests): configs/demo_video.py with a 16x16 VQGAN of a few
steps, a smaller model, two stages of a few steps (2-4 then 4-8 frames), little data and a small
eval grid."""

from lwm.config import load_config_file
from lwm.training.config import stage_section


def get_config():
    config = load_config_file("demo_video")
    m = config.model
    m.hidden_size = 32
    m.intermediate_size = 64
    m.num_layers = 2
    m.num_heads = 2
    m.num_kv_heads = 1
    m.attention.query_chunk_size = 32
    m.attention.key_chunk_size = 32
    config.train.warmup_steps = 1
    config.train.log_every = 1
    config.train.save_every = 100
    config.train.progress_bar = False
    config.stages = [
        stage_section(seq_len=128, steps=2, batch_tokens=1024, rope_theta=1e4),
        stage_section(
            seq_len=256,
            steps=1,
            batch_tokens=1024,
            rope_theta=1e5,
            max_sequence_length=512,
            mesh=dict(dp=1, fsdp=4, tp=1, sp=2),
        ),
    ]
    v = config.vqgan
    v.resolution = 16
    v.base_channels = 8
    v.channel_multipliers = (1, 2, 2)  # 16 -> 4x4 codes
    v.norm_groups = 4
    v.embed_dim = 8
    t = config.vqgan_train
    t.steps = 4
    t.batch_size = 4
    t.warmup_steps = 1
    t.log_every = 2
    t.eval_every = 4
    t.save_every = 4
    t.grid_frames = 2
    d = config.demo
    d.corpus_sentences = 300
    d.task_text_repeats = 2
    d.task_buckets = [[2, 4, 12], [4, 8, 6]]
    d.encode_batch = 8
    d.eval_lengths = [4, 16]
    d.eval_depths = "0,1"
    d.eval_samples = 1
    d.eval_batch_size = 2
    return config

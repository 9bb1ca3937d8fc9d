"""The demo pipeline in seconds (for tests): configs/demo.py with a smaller model, stages of a
few steps at 128 -> 256 -> 512 tokens, little data and a small eval grid."""

from lwm.config import load_config_file
from lwm.training.config import stage_section


def get_config():
    config = load_config_file("demo")
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
            max_sequence_length=256,
            mesh=dict(dp=1, fsdp=4, tp=1, sp=2),
        ),
        # the real demo's last-stage options: only the longer tasks, stretched positions
        stage_section(
            seq_len=512,
            steps=1,
            batch_tokens=1024,
            rope_theta=1e6,
            max_sequence_length=1024,
            mesh=dict(dp=1, fsdp=2, tp=1, sp=4),
            data=dict(min_example_len=129, position_stretch=2.0),
        ),
    ]
    d = config.demo
    d.corpus_sentences = 2000
    d.task_buckets = [[96, 128, 40], [128, 256, 10, 2], [256, 512, 4]]  # min 2 needles in one
    d.copy_ratio = [0.5, 0.25, 0.5]  # per bucket, as the demo
    d.eval_lengths = [256, 1024]
    d.eval_depths = "0,1"
    d.eval_samples = 1
    d.multi_lengths = [256]
    d.multi_samples = 1
    return config

"""`make demo` / `lwm demo`: a tiny world model trained from scratch on CPU (8 simulated devices,
ring attention) through four context stages, 128 -> 512 -> 2K -> 8K tokens with RoPE theta
rising, then needle-in-a-haystack evals up to 16K (2x the last stage).

The `demo` section drives data generation and evaluation; everything else is an ordinary
`lwm train` config (any field can be overridden with `--config.a.b=v`).
"""

import ml_collections

from lwm.data.config import default_data_config
from lwm.models.presets import base_config
from lwm.training.config import default_train_section, stage_section


def get_config():
    config = base_config("debug")
    m = config.model
    m.vocab_size = 768
    m.hidden_size = 128
    m.intermediate_size = 384
    m.num_layers = 4
    m.num_heads = 4
    m.num_kv_heads = 4
    m.rope_theta = 10_000.0
    m.max_sequence_length = 512  # stage 1 rows are shorter; the model's limit grows per stage
    m.attention.backend = "ring"
    m.attention.layout = "zigzag"
    m.attention.query_chunk_size = 256
    m.attention.key_chunk_size = 256

    config.mesh = ml_collections.ConfigDict(dict(dp=1, fsdp=-1, tp=1, sp=1))
    config.train = default_train_section(
        lr=2e-3,
        warmup_steps=20,
        weight_decay=0.01,
        save_every=50,
        keep=2,
        log_every=10,
        reset_optimizer=False,
        peak_flops=1e11,  # nominal: skip the matmul benchmark (MFU is not the point here)
    )
    config.stages = [
        # Most steps where they are cheap: short rows packed with copy / recall drills and short
        # needle tasks, where content-based retrieval is learned...
        stage_section(seq_len=128, steps=2400, batch_tokens=4096, rope_theta=1e4, lr=3e-3),
        # ...then the context grows, RoPE theta with it, sequence parallelism for longer rows.
        stage_section(
            seq_len=512,
            steps=150,
            batch_tokens=8192,
            rope_theta=1e4,
            lr=2e-3,
            warmup_steps=5,
        ),
        stage_section(
            seq_len=2048,
            steps=40,
            batch_tokens=8192,
            rope_theta=1e5,
            max_sequence_length=2048,
            lr=1e-3,
            warmup_steps=5,
            mesh=dict(dp=1, fsdp=4, tp=1, sp=2),
        ),
        stage_section(
            seq_len=8192,
            steps=20,
            batch_tokens=16384,
            rope_theta=1e6,
            max_sequence_length=16384,
            lr=5e-4,
            warmup_steps=3,
            mesh=dict(dp=1, fsdp=2, tp=1, sp=4),
        ),
    ]

    config.data = default_data_config()
    config.data.source = "dataset"
    config.data.long_examples = "drop"  # each stage reads the tasks that fit its rows
    config.data.text_vocab_size = m.vocab_size

    d = ml_collections.ConfigDict()
    d.vocab_size = m.vocab_size  # sentencepiece vocabulary trained on the generated corpus
    d.corpus_sentences = 20000
    # Needle tasks per length bucket: [min_tokens, max_tokens, count].
    d.task_buckets = [[64, 128, 20000], [128, 512, 4000], [512, 2048, 800], [2048, 8192, 200]]
    d.max_keys = 4  # up to 3 distractor needles
    d.max_queries = 2  # up to 2 keys asked at once
    d.copy_docs = 25000  # copy drills (4-24 keys/digits, repeated)
    # Associative-recall drills (2-6 needles, asked back shuffled); distinct enough that stage 1
    # (~150K examples) sees few repeats, so numbers cannot be memorised.
    d.recall_docs = 60000
    d.seed = 0
    d.eval_lengths = [1024, 2048, 4096, 8192, 16384]
    d.eval_depths = "0:1:5"
    d.eval_samples = 2
    d.eval_batch_size = 2
    d.multi_needles = 4  # a second eval: 4 needles, 1 asked
    d.multi_lengths = [2048, 8192]
    d.multi_samples = 1
    d.eval_mesh = "sp=8"
    config.demo = d
    return config

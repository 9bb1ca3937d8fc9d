"""`lwm demo`: interim version until the end-to-end demo lands (issue 8).

It initialises the `debug` preset on the available devices, runs one forward pass and prints the
logits' shape and statistics — saying plainly that this is not yet the full training demo.
"""

from __future__ import annotations

import argparse
import time


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("demo", help="run the demo (for now: a small forward pass)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from lwm.config import load_config
    from lwm.models.config import ModelConfig
    from lwm.models.stats import param_count
    from lwm.models.transformer import init_model

    print("lwm demo: the full demo (data -> ring-attention training through context stages ->")
    print("needle eval -> plots) is not built yet; running a forward pass of the debug model.")
    cfg = ModelConfig.from_dict(load_config("debug").model)
    t0 = time.perf_counter()
    model = init_model(cfg, seed=args.seed)
    tokens = jax.random.randint(jax.random.key(args.seed), (2, 128), 0, cfg.vocab_size)
    logits = np.asarray(model(tokens))
    dt = time.perf_counter() - t0
    probs = jax.nn.softmax(jnp.asarray(logits), axis=-1)
    entropy = float(-(probs * jnp.log(probs)).sum(-1).mean())
    print(f"model: debug preset, {param_count(cfg):,} parameters, devices: {jax.device_count()}")
    print(f"forward: tokens {tuple(tokens.shape)} -> logits {logits.shape} in {dt:.2f}s")
    print(f"mean next-token entropy {entropy:.3f} nats (uniform: {np.log(cfg.vocab_size):.3f})")
    return 0

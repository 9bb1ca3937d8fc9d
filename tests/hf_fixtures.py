"""Random-init HF LLaMA models saved to disk: the oracle for parity and conversion tests."""

from __future__ import annotations

import pathlib

import numpy as np

HF_TINY = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,  # GQA
    rope_theta=50000.0,  # not the default 10000
    tie_word_embeddings=False,
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
)


def save_hf_llama(path: pathlib.Path, seed: int = 0, **overrides) -> pathlib.Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**{**HF_TINY, **overrides}))
    # Random init leaves norms at 1: perturb them so the test sees their mapping too.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(path)
    return path


def hf_logits(path: pathlib.Path, tokens: np.ndarray) -> np.ndarray:
    import torch
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        out = model(torch.as_tensor(tokens, dtype=torch.long))
    return out.logits.numpy()

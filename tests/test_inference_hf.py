"""Greedy generation from an HF-converted checkpoint equals transformers' greedy `generate`."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from hf_fixtures import save_hf_llama  # noqa: E402

import lwm  # noqa: E402
from lwm.inference.sampler import Sampler  # noqa: E402
from lwm.interop.hf_convert import convert_from_hf  # noqa: E402

EOS = 2
NEW = 12


def _hf_greedy(hf_dir, prompts):
    from transformers import GenerationConfig, LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    width = max(len(p) for p in prompts)
    ids = np.zeros((len(prompts), width), np.int64)
    mask = np.zeros_like(ids)
    for i, p in enumerate(prompts):  # left padding, as our sampler
        ids[i, width - len(p) :] = p
        mask[i, width - len(p) :] = 1
    gen = GenerationConfig(max_new_tokens=NEW, do_sample=False, eos_token_id=EOS, pad_token_id=0)
    with torch.no_grad():
        out = model.generate(
            torch.as_tensor(ids), attention_mask=torch.as_tensor(mask), generation_config=gen
        )
    return out[:, width:].numpy()


def test_greedy_generate_matches_transformers(tmp_path):
    hf_dir = save_hf_llama(tmp_path / "hf", seed=3)
    ckpt = convert_from_hf(hf_dir, tmp_path / "lwm")
    model = lwm.load_model(ckpt)
    assert model.config.rope_theta == 50000.0  # taken from the checkpoint
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, 128, n).tolist() for n in (19, 6)]
    ours = Sampler(model, prefill_chunk=16, cache_block=32).generate(
        prompts, max_new_tokens=NEW, eos_id=EOS
    )
    theirs = _hf_greedy(hf_dir, prompts)
    for mine, hf in zip(ours, theirs.tolist()):
        assert mine == hf[: len(mine)]
        assert len(mine) == NEW or mine[-1] == EOS  # cut right after EOS, as HF stops

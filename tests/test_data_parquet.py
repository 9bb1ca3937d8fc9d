"""`lwm data build --input X.parquet`: the same dataset as the same records given as jsonl, read
row group by row group; missing / mistyped columns and null values are one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from tokenizer_fixtures import llama3_style_dir  # noqa: E402

from lwm.cli.main import main as lwm_main  # noqa: E402
from lwm.data.builder import build_dataset  # noqa: E402
from lwm.data.loader import open_source, read_metadata  # noqa: E402
from lwm.errors import LwmError  # noqa: E402

__all__ = ["llama3_style_dir"]  # fixture in use

VISION = {"tokens_per_frame": 4, "vision_eof_id": 64, "vision_eov_id": 65}
FIELDS = "[vision+q],a,ids"


def _records(n: int = 11) -> list[dict]:
    rng = np.random.default_rng(0)
    return [
        {
            "q": f"Question {i}: what is {i} times three?",
            "a": f"The answer is {3 * i}. ünï ✓",
            "vision": rng.integers(0, 64, 4 * (1 + i % 3)).tolist(),
            "ids": [5 + i, 7],
            "unused": i * 1.5,
        }
        for i in range(n)
    ]


def _write_parquet(path, records, row_group_size=4, **types) -> None:
    cols = {k: [r[k] for r in records] for k in records[0]}
    schema = pa.schema([(k, types.get(k) or pa.array(v).type) for k, v in cols.items()])
    pq.write_table(pa.table(cols, schema=schema), path, row_group_size=row_group_size)


def _dataset(path) -> list[tuple[list, list, list]]:
    src = open_source(path)
    return [
        tuple(np.asarray(src[i][k]).tolist() for k in ("tokens", "loss_mask", "vision_mask"))
        for i in range(len(src))
    ]


def test_parquet_builds_what_jsonl_builds(llama3_style_dir, tmp_path, capsys):
    recs = _records()
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    _write_parquet(tmp_path / "in.parquet", recs)
    assert pq.ParquetFile(tmp_path / "in.parquet").num_row_groups == 3
    common = ["data", "build", "--fields", FIELDS, "--tokenizer", str(llama3_style_dir)]
    common += ["--tokens-per-frame", "4", "--vision-eof-id", "64", "--vision-eov-id", "65"]
    for name in ("in.jsonl", "in.parquet"):
        argv = [*common, "--input", str(tmp_path / name), "--out", str(tmp_path / f"ds_{name}")]
        assert lwm_main(argv) == 0, capsys.readouterr().err
    a, b = _dataset(tmp_path / "ds_in.jsonl"), _dataset(tmp_path / "ds_in.parquet")
    assert len(a) == len(recs) and a == b  # same examples, same order
    ma, mb = read_metadata(tmp_path / "ds_in.jsonl"), read_metadata(tmp_path / "ds_in.parquet")
    for key in ("num_tokens", "num_loss_tokens", "num_vision_tokens", "max_text_id"):
        assert ma[key] == mb[key]
    # A directory stands for its .parquet files too (here: the parquet file and the jsonl file).
    both = tmp_path.parent / f"{tmp_path.name}-both"  # an --out inside an input is refused
    meta = build_dataset(
        tmp_path, both, tokenizer=llama3_style_dir, fields=FIELDS, quiet=True, **VISION
    )
    assert meta["num_examples"] == 2 * len(recs)


def test_parquet_errors_name_row_group_and_row(llama3_style_dir, tmp_path):
    recs = _records(7)
    kw = {"tokenizer": llama3_style_dir, "fields": FIELDS, "quiet": True, **VISION}

    def build(path, **more):
        return build_dataset(path, tmp_path / "out", overwrite=True, **{**kw, **more})

    p = tmp_path / "missing.parquet"
    _write_parquet(p, [{k: v for k, v in r.items() if k != "a"} for r in recs])
    with pytest.raises(LwmError) as e:
        build(p)
    assert str(e.value).startswith(f"{p}: row group 0, row 0: no column 'a' (columns: q,")
    p = tmp_path / "typed.parquet"
    _write_parquet(p, [{**r, "a": i} for i, r in enumerate(recs)])
    with pytest.raises(LwmError) as e:
        build(p)
    assert str(e.value) == (
        f"{p}: row group 0, row 0: column 'a' is int64, field 'a' needs a string or a list of "
        "token ids"
    )
    p = tmp_path / "vision.parquet"
    _write_parquet(p, [{**r, "vision": "not codes"} for r in recs])
    with pytest.raises(LwmError, match=r"row group 0, row 0: column 'vision' is string, field"):
        build(p)
    p = tmp_path / "null.parquet"
    _write_parquet(
        p, [{**r, "a": None if i == 6 else r["a"]} for i, r in enumerate(recs)], a=pa.string()
    )
    with pytest.raises(LwmError) as e:
        build(p)
    assert str(e.value) == f"{p}: row group 1, row 2: column 'a' is null"
    assert build(p, skip_bad=True)["skipped_lines"] == 1
    p = tmp_path / "bad_code.parquet"
    _write_parquet(
        p, [{**r, "vision": [99] * 4 if i == 5 else r["vision"]} for i, r in enumerate(recs)]
    )
    with pytest.raises(LwmError, match=f"{p}: row group 1, row 1: vision field 'vision': code 99"):
        build(p)
    p = tmp_path / "junk.parquet"
    p.write_bytes(b"not parquet at all")
    with pytest.raises(LwmError, match=f"{p}: not a Parquet file"):
        build(p)

"""`lwm data build`: a TFDS `GeneratorBasedBuilder` that tokenizes jsonl / .txt / Parquet inputs
with the field syntax and writes `array_record` shards (readable by grain, no TensorFlow needed).

The finished dataset directory holds TFDS's `dataset_info.json` / `features.json` (example counts
per split), the array_record shards, `metadata.json` with our statistics (token counts, largest
text / vision id, skipped lines, the fields spec and tokenizer), and the tokenizer's files
(`tokenizer.model`, or `tokenizer.json` and the files beside it). It is written under a temporary
name and renamed into place at the end, so an interrupted build never leaves a half dataset behind.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from lwm.data.dataset_manifest import (
    DATASET_NAME,
    check_replaceable,
    replace_dataset,
    write_manifest,
)
from lwm.data.fields import ExampleEncoder
from lwm.data.json_input import JsonTooDeep, loads_bounded
from lwm.data.output_guard import check_out_not_input
from lwm.data.parquet_input import iter_parquet_records
from lwm.data.tokenizer import Tokenizer, load_tokenizer, save_tokenizer
from lwm.errors import LwmError

DATASET_VERSION = "1.0.0"
FEATURE_KEYS = ("tokens", "loss_mask", "vision_mask")


@dataclasses.dataclass
class BuildStats:
    """Counts gathered while generating; saved to metadata.json."""

    num_examples: int = 0
    num_tokens: int = 0
    num_loss_tokens: int = 0
    num_vision_tokens: int = 0
    max_text_id: int = -1
    max_vision_id: int = -1
    skipped_lines: int = 0
    empty_examples: int = 0


INPUT_SUFFIXES = (".txt", ".jsonl", ".parquet")


def input_items(inputs: str | os.PathLike | Sequence[str | os.PathLike]) -> list[pathlib.Path]:
    """The paths named by `--input`: `a.jsonl,b.parquet` or a list of paths (not expanded)."""
    if isinstance(inputs, os.PathLike):
        inputs = [inputs]
    items = inputs.split(",") if isinstance(inputs, str) else list(inputs)
    return [pathlib.Path(str(item).strip()) for item in items if str(item).strip()]


def expand_inputs(inputs: str | os.PathLike | Sequence[str | os.PathLike]) -> list[pathlib.Path]:
    """`a.jsonl,b.parquet` or a list of paths; a directory stands for its `.txt` / `.jsonl` /
    `.parquet` files."""
    files: list[pathlib.Path] = []
    for p in input_items(inputs):
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.suffix in INPUT_SUFFIXES and q.is_file())
            if not found:
                raise LwmError(f"input directory {p} holds no .txt, .jsonl or .parquet files")
            files.extend(found)
        elif p.is_file():
            if p.suffix not in (*INPUT_SUFFIXES, ".json"):
                raise LwmError(
                    f"input {p}: expected a .jsonl, .txt or .parquet file or a directory"
                )
            files.append(p)
        else:
            raise LwmError(f"input not found: {p}")
    if not files:
        raise LwmError("no input files given")
    return files


def iter_records(
    files: Sequence[pathlib.Path], *, skip_bad: bool, stats: BuildStats, keys: Sequence[str]
) -> Iterator[tuple[str, str, bool, dict[str, Any]]]:
    """(key, where, skippable, record) per example: a jsonl line, a Parquet row, or a whole .txt
    file as `{"text": ...}`; `where` names the file and line (or row group and row), and
    `skippable` says whether `--skip-bad` may skip it (a line or row, not a whole file).

    A bad jsonl line (not JSON, not an object, or lacking a field) or Parquet row (a null value)
    raises LwmError naming where it is, or is counted in `stats.skipped_lines` with `skip_bad`.
    """
    for fi, path in enumerate(files):
        if path.suffix == ".txt":
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError as e:
                raise LwmError(f"{path}: not UTF-8 text ({_utf8_problem(e)})") from None
            yield f"{fi}:0", str(path), False, {"text": text}
            continue
        if path.suffix == ".parquet":
            for key, where, rec in iter_parquet_records(path, fi, keys):
                if isinstance(rec, ValueError):
                    if skip_bad:
                        stats.skipped_lines += 1
                        continue
                    raise LwmError(f"{where}: {rec}")
                yield key, where, True, rec
            continue
        with open(path, "rb") as f:  # decoded per line: a bad byte is one bad line
            for lineno, raw in enumerate(f, start=1):
                try:
                    try:
                        line = raw.decode("utf-8")
                    except UnicodeDecodeError as e:
                        raise ValueError(f"not UTF-8 ({_utf8_problem(e)})") from None
                    if not line.strip():
                        continue
                    try:
                        rec = loads_bounded(line)
                    except json.JSONDecodeError as e:
                        raise ValueError(f"not valid JSON ({e.msg} at column {e.colno})") from None
                    except JsonTooDeep as e:
                        raise ValueError(f"not valid JSON ({e})") from None
                    if not isinstance(rec, dict):
                        raise ValueError(f"expected a JSON object, got {type(rec).__name__}")
                    missing = [k for k in keys if k not in rec]
                    if missing:
                        raise ValueError(f"missing field {missing[0]!r}")
                except ValueError as e:  # json.JSONDecodeError is a ValueError
                    if skip_bad:
                        stats.skipped_lines += 1
                        continue
                    raise LwmError(f"{path}:{lineno}: {_one_line(e)}") from None
                yield f"{fi}:{lineno}", f"{path}:{lineno}", True, rec


def _utf8_problem(e: UnicodeDecodeError) -> str:
    return f"byte 0x{e.object[e.start]:02x} at offset {e.start}"


def check_has_examples(files: Sequence[pathlib.Path], encoder, *, skip_bad: bool) -> None:
    """One-line error when no input line gives an example (empty files, or every line bad with
    `skip_bad`), before TFDS starts (it fails with an assertion of its own). Stops at the first
    good example, so a normal input costs one record."""
    stats = BuildStats()
    for _key, where, skippable, rec in iter_records(
        files, skip_bad=skip_bad, stats=stats, keys=list(encoder.keys)
    ):
        try:
            if len(encoder(rec)) >= 2:
                return
            stats.empty_examples += 1
        except LwmError as e:
            if not (skip_bad and skippable):
                raise LwmError(f"{where}: {e}") from None
            stats.skipped_lines += 1
    names = ", ".join(map(str, files))
    why = []
    if stats.skipped_lines:
        why.append(f"all {stats.skipped_lines} non-empty lines bad, skipped by --skip-bad")
    if stats.empty_examples:
        why.append(f"{stats.empty_examples} records with fewer than 2 tokens")
    raise LwmError(f"no examples in {names} ({'; '.join(why) or 'empty: no records'})")


def _one_line(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def _make_builder_class():
    import tensorflow_datasets as tfds

    class LwmTokens(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        """Tokenized examples: tokens, loss_mask, vision_mask (variable length)."""

        VERSION = tfds.core.Version(DATASET_VERSION)
        name = DATASET_NAME
        # No checksums / metadata files beside the code: without this TFDS probes the package
        # with `importlib_resources`, which is not a dependency.
        code_path = None

        def __init__(self, *, files, encoder, skip_bad, **kw):
            self._files = files
            self._encoder = encoder
            self._skip_bad = skip_bad
            self.stats = BuildStats()
            super().__init__(**kw)

        # TFDS prints "Downloading and preparing dataset ..." and "... downloaded and prepared
        # to <temporary dir>": nothing is downloaded and that folder is renamed; `lwm data build`
        # reports what it wrote itself.
        def _log_download_bytes(self) -> None:
            pass

        def _log_download_done(self) -> None:
            pass

        def _info(self):
            seq = tfds.features.Tensor(shape=(None,), dtype=np.int32)
            mask = tfds.features.Tensor(shape=(None,), dtype=np.uint8)
            return tfds.core.DatasetInfo(
                builder=self,
                description="lwm tokenized examples (field syntax applied)",
                features=tfds.features.FeaturesDict(
                    {"tokens": seq, "loss_mask": mask, "vision_mask": mask}
                ),
                metadata=tfds.core.MetadataDict(),
            )

        def _split_generators(self, dl_manager):
            del dl_manager
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            st = self.stats
            keys = [k for k in self._encoder.keys]
            for key, where, skippable, rec in iter_records(
                self._files, skip_bad=self._skip_bad, stats=st, keys=keys
            ):
                try:
                    ex = self._encoder(rec)
                except LwmError as e:
                    if self._skip_bad and skippable:
                        st.skipped_lines += 1
                        continue
                    raise LwmError(f"{where}: {e}") from None
                if len(ex) < 2:  # nothing to predict
                    st.empty_examples += 1
                    continue
                st.num_examples += 1
                st.num_tokens += len(ex)
                st.num_loss_tokens += int(ex.loss_mask[1:].sum())
                vis = ex.vision_mask.astype(bool)
                st.num_vision_tokens += int(vis.sum())
                if (~vis).any():
                    st.max_text_id = max(st.max_text_id, int(ex.tokens[~vis].max()))
                if vis.any():
                    st.max_vision_id = max(st.max_vision_id, int(ex.tokens[vis].max()))
                yield (
                    key,
                    {
                        "tokens": ex.tokens,
                        "loss_mask": ex.loss_mask,
                        "vision_mask": ex.vision_mask,
                    },
                )
            self.info.metadata.update(self._metadata())

        def _metadata(self) -> dict[str, Any]:
            enc = self._encoder
            tok = enc.tokenizer
            meta = {
                **dataclasses.asdict(self.stats),
                "fields": ",".join(_field_str(f) for f in enc.fields),
                "tokenizer": str(tok.path),
                "tokenizer_sha256": _sha256(tok.path),
                "text_vocab_size": tok.vocab_size,
                "vision_eof_id": enc.vision_eof_id,
                "vision_eov_id": enc.vision_eov_id,
                "inputs": [str(f) for f in self._files],
            }
            if tok.kind != "sentencepiece":  # sentencepiece datasets keep their old metadata
                meta["tokenizer_kind"] = tok.kind
                meta["tokenizer_files"] = {n: _sha256(p) for n, p in sorted(tok.files.items())}
            return meta

    return LwmTokens


def _field_str(f) -> str:
    body = f.literal or "+".join(f.subfields)
    return f"[{body}]" if f.masked else body


def _sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def build_dataset(
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    tokenizer: Tokenizer | str | os.PathLike,
    fields: str = "text",
    overwrite: bool = False,
    skip_bad: bool = False,
    num_shards: int | None = None,
    quiet: bool = False,
    **encoder_kw: Any,
) -> dict[str, Any]:
    """Builds a dataset directory at `out_dir`; returns its metadata (counts, max ids, ...).

    `encoder_kw` go to ExampleEncoder (add_bos, add_eos, max_n_frames, tokens_per_frame, ...).
    Refuses, before any work, an `out_dir` that is, holds or lies inside an input, and an existing
    `out_dir` unless `overwrite`; `overwrite` replaces only a dataset an earlier build wrote (see
    `check_replaceable`), never foreign files.
    """
    import tensorflow_datasets as tfds

    out = pathlib.Path(out_dir)
    files = expand_inputs(inputs)
    check_out_not_input(out, [*input_items(inputs), *files])
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise LwmError(f"output directory {out} exists; pass --overwrite to replace it")
        check_replaceable(out)
    tok = load_tokenizer(tokenizer) if isinstance(tokenizer, str | os.PathLike) else tokenizer
    encoder = ExampleEncoder(tok, fields, **encoder_kw)
    check_has_examples(files, encoder, skip_bad=skip_bad)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = pathlib.Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.building-"))
    try:
        builder = _make_builder_class()(
            files=files,
            encoder=encoder,
            skip_bad=skip_bad,
            data_dir=str(work),
            file_format="array_record",
        )
        # Never reach for TFDS's GCS mirror: everything is generated locally.
        config = tfds.download.DownloadConfig(try_download_gcs=False, num_shards=num_shards)
        kw = {"download_dir": str(work / "downloads"), "download_config": config}
        tfds.display_progress_bar(not quiet)  # a global switch in TFDS
        try:
            builder.download_and_prepare(**kw)
        finally:
            tfds.display_progress_bar(True)
        built = work / DATASET_NAME / DATASET_VERSION
        meta = json.loads((built / "metadata.json").read_text())
        if meta["num_examples"] == 0:
            raise LwmError(f"no examples in {', '.join(map(str, files))}")
        # The dataset carries its tokenizer: training on it and later commands need no path.
        save_tokenizer(tok, built)
        write_manifest(built, meta)
        replace_dataset(built, out, work)
    except LwmError:
        raise
    except Exception as e:  # noqa: BLE001 - TFDS may wrap our error; surface it on one line
        inner = _find_lwm_error(e)
        if inner is not None:
            raise inner from None
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if meta["skipped_lines"] and not quiet:
        print(f"skipped {meta['skipped_lines']} bad line(s)", file=sys.stderr)
    return meta


def _find_lwm_error(e: BaseException | None) -> LwmError | None:
    seen = 0
    while e is not None and seen < 10:
        if isinstance(e, LwmError):
            return e
        e = e.__cause__ or e.__context__
        seen += 1
    return None

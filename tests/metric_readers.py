"""Readers of the metric files other tools consume, written from their format descriptions (not
with the writers' own code), so tests check what TensorBoard and W&B would read.

TensorBoard event file: TFRecord framing, each record `uint64 length | uint32 masked crc32c of the
length | data | uint32 masked crc32c of the data` (little endian), each `data` a serialized
`tensorflow.Event` proto (its schema as shipped with tensorboardX). W&B's `run-<id>.wandb`: a
7-byte header (`:W&B`, magic, version), then LevelDB-log blocks of 32 KiB, each chunk
`uint32 crc | uint16 length | uint8 type (1 full, 2 first, 3 middle, 4 last)` + payload, a full
payload being a serialized `wandb_internal.Record`.
"""

import pathlib
import struct

_CRC_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _CRC_TABLE.append(_c)


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = _CRC_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecords(path: pathlib.Path) -> list[bytes]:
    """The records of a TFRecord file, checksums verified."""
    raw, out, off = pathlib.Path(path).read_bytes(), [], 0
    while off < len(raw):
        (n,) = struct.unpack_from("<Q", raw, off)
        (len_crc,) = struct.unpack_from("<I", raw, off + 8)
        assert len_crc == masked_crc(raw[off : off + 8]), "bad length crc"
        data = raw[off + 12 : off + 12 + n]
        (data_crc,) = struct.unpack_from("<I", raw, off + 12 + n)
        assert data_crc == masked_crc(data), "bad data crc"
        out.append(data)
        off += 12 + n + 4
    return out


def tensorboard_scalars(logdir: pathlib.Path) -> dict[str, dict[int, float]]:
    """`{tag: {step: value}}` of every scalar summary in the event files under `logdir`, files
    in name (= creation time) order; a purge event (a restart) drops the steps at and after it."""
    from tensorboardX.proto import event_pb2

    out: dict[str, dict[int, float]] = {}
    for f in sorted(pathlib.Path(logdir).rglob("events.out.tfevents.*")):
        for rec in tfrecords(f):
            ev = event_pb2.Event()
            ev.ParseFromString(rec)
            if ev.HasField("session_log") and ev.session_log.status == ev.session_log.START:
                for steps in out.values():
                    for s in [s for s in steps if s >= ev.step]:
                        del steps[s]
            if not ev.HasField("summary"):
                continue
            for v in ev.summary.value:
                if v.HasField("simple_value"):
                    out.setdefault(v.tag, {})[int(ev.step)] = v.simple_value
    return out


def wandb_history(run_file: pathlib.Path, timeout: float = 30.0) -> list[dict]:
    """The `history` rows (`run.log` calls) of an offline W&B run file, values JSON-decoded.

    W&B's service process writes the file after `finish()` returns: wait for its `exit` record."""
    import time

    t0 = time.time()
    while True:
        rows, done = _wandb_records(run_file)
        if done or time.time() - t0 > timeout:
            return rows
        time.sleep(0.1)


def _wandb_records(run_file: pathlib.Path) -> tuple[list[dict], bool]:
    import json

    from wandb.proto import wandb_internal_pb2

    raw = pathlib.Path(run_file).read_bytes()
    assert raw[:4] == b":W&B", raw[:8]
    block, off, buf, rows, done = 32768, 7, b"", [], False
    while off + 7 <= len(raw):
        if block - off % block < 7:  # a block's tail too short for a header is padding
            off += block - off % block
            continue
        _, n, kind = struct.unpack_from("<IHB", raw, off)
        off += 7
        if kind == 0 and n == 0:
            continue
        buf += raw[off : off + n]
        off += n
        if kind in (1, 4):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(buf)
            buf = b""
            done = done or rec.WhichOneof("record_type") == "exit"
            if rec.WhichOneof("record_type") == "history":
                row = {}
                for item in rec.history.item:
                    key = item.key or "/".join(item.nested_key)
                    row[key] = json.loads(item.value_json)
                rows.append(row)
    return rows, done

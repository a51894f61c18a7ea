"""Read an offline W&B run's `run-*.wandb` file (a LevelDB-style log of protobuf records).

W&B no longer ships a reader; this one is for tests: it returns the run's name, group, tags,
config and summary as W&B would upload them.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32 * 1024
HEADER = 7  # "W&B" magic + 2-byte ident + 1-byte version; also the size of a record header


def _payloads(data: bytes) -> list[bytes]:
    assert data[:3] == b":W&" or data[:3] == b"W&B" or data[1:4] == b"W&B", data[:7]
    out, pos, pending = [], HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == 1:
            out.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            out.append(pending + chunk)
            pending = b""
    return out


def read_offline_run(run_dir: Path) -> dict[str, Any]:
    (path,) = Path(run_dir).glob("run-*.wandb")
    run: dict[str, Any] = {"config": {}, "summary": {}}
    for payload in _payloads(path.read_bytes()):
        record = pb.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.update(id=r.run_id, name=r.display_name, group=r.run_group, tags=list(r.tags))
            run["job_type"] = r.job_type
            for item in r.config.update:
                run["config"][item.key] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                run["config"][item.key] = json.loads(item.value_json)
        elif kind == "summary":
            for item in record.summary.update:
                run["summary"][item.key] = json.loads(item.value_json)
    return run

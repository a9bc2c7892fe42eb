"""Pre-signed webhook deliveries, written to a file that both load generators read.

Signing is done here, ahead of the run, so the load generators spend their time sending,
not hashing. Each delivery has its own envelope ``id`` (the ingest dedup key) and its own
record key, so ingest treats every request as new work: no 200 "duplicate" shortcut, and
the record events spread over the raw topic's partitions as real traffic would.

File format, one request per line, tab-separated: ``webhook-id``, ``webhook-timestamp``,
``webhook-signature``, JSON body. ``json.dumps`` never emits a raw tab or newline, so the
body needs no escaping, and wrk's Lua can split the line with a pattern.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ponte.shared.sample_requests import EXAMPLE_ENVELOPE
from ponte.shared.signatures import sign_standard


@dataclass(frozen=True)
class SignedRequest:
    """One delivery as the sender would put it on the wire."""

    webhook_id: str
    timestamp: int
    signature: str
    body: bytes

    def headers(self) -> dict[str, str]:
        return {
            "content-type": "application/json",
            "webhook-id": self.webhook_id,
            "webhook-timestamp": str(self.timestamp),
            "webhook-signature": self.signature,
        }


def write_requests(path: Path, secret: str, prefix: str, count: int) -> None:
    """Write ``count`` signed deliveries with ids ``<prefix>-<n>``, timestamped now (they
    stay valid for the signature tolerance, 5 minutes by default)."""
    timestamp = int(time.time())
    # The CLI's example ERP order: one row, with a nested item table.
    template: dict[str, Any] = copy.deepcopy(EXAMPLE_ENVELOPE)
    with path.open("w", encoding="utf-8") as out:
        for number in range(count):
            event_id = f"{prefix}-{number}"
            template["id"] = event_id
            template["rows"][0]["codigo"] = f"PED-{prefix}-{number}"
            body = json.dumps(template, ensure_ascii=False, separators=(",", ":")).encode()
            webhook_id = f"msg_{event_id}"
            signature = sign_standard(secret, webhook_id, timestamp, body)
            out.write(f"{webhook_id}\t{timestamp}\t{signature}\t{body.decode()}\n")


def read_requests(path: Path) -> Iterator[SignedRequest]:
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            webhook_id, timestamp, signature, body = line.rstrip("\n").split("\t", 3)
            yield SignedRequest(webhook_id, int(timestamp), signature, body.encode())

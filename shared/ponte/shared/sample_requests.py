"""A sample ERP webhook, signed, for trying Ponte by hand (``ponte sign``, ``ponte dev``)
and for benchmarks: the "table of tables" order of ``docs`` and the seeds, and a curl that
carries a valid Standard Webhooks signature for it."""

from __future__ import annotations

import copy
import json
import secrets
import time
from typing import Any

from ponte.shared.signatures import sign_standard


def signed_curl(url: str, secret: str, body: bytes, webhook_id: str | None = None) -> str:
    """A ready-to-paste curl carrying a Standard Webhooks signature (valid for the
    signature tolerance, 5 minutes by default)."""
    webhook_id = webhook_id or f"msg_{secrets.token_hex(8)}"
    timestamp = int(time.time())
    signature = sign_standard(secret, webhook_id, timestamp, body)
    quoted = body.decode().replace("'", "'\\''")
    return (
        f"curl -sS -X POST '{url}' \\\n"
        f"  -H 'content-type: application/json' \\\n"
        f"  -H 'webhook-id: {webhook_id}' \\\n"
        f"  -H 'webhook-timestamp: {timestamp}' \\\n"
        f"  -H 'webhook-signature: {signature}' \\\n"
        f"  --data-binary '{quoted}'"
    )


EXAMPLE_ENVELOPE = {
    "id": "evt-2024-11-14-000184",
    "occurred_at": "2024-11-14T12:01:32-03:00",
    "operation": "upsert",
    "table": "Pedido",
    "rows": [
        {
            "codigo": "PED-1001",
            "empresa": "000123",
            "vendedor": "V07",
            "emissao": "14/11/2024",
            "total": "1.234,56",
            "situacao": {"$code": {"tabela": "SIT_PEDIDO", "chave": "AP"}},
            "Itens pedido": {
                "table": "Itens pedido",
                "rows": [{"seq": 1, "produto": "P-9", "quantidade": "2", "preco": "617,28"}],
            },
        }
    ],
}


def example_order(event_id: str | None = None) -> bytes:
    """``EXAMPLE_ENVELOPE`` as a request body, under a fresh envelope id unless one is
    given: ingest answers a repeated id as a duplicate, so a sample sent twice with one id
    would never be seen arriving a second time."""
    envelope: dict[str, Any] = copy.deepcopy(EXAMPLE_ENVELOPE)
    envelope["id"] = event_id or f"evt-sample-{int(time.time())}-{secrets.token_hex(4)}"
    return json.dumps(envelope, ensure_ascii=False).encode()

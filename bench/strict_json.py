"""Microseconds per webhook body: the strict edge decoder against the readers it replaced.

    .venv/bin/python bench/strict_json.py

Bodies: ERP envelopes of about 1, 3 and 5 KB (Brazilian rows: CNPJ, 44-digit NF-e keys
as strings, decimals, accents escaped the way Python senders write them, child items),
the same without the NF-e key (no 19-digit run: the reader before took orjson), and one
body that takes the strict path (an integer of 30 digits). Per body it prints
the median of 21 rounds of µs per decode for plain ``orjson.loads``, plain
``json.loads``, the reader ingest had before (``before``: orjson unless a 19-digit run,
then ``json.loads``; no check at all) and ``strict_json.loads``. No infrastructure.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import orjson

from ponte.shared import strict_json


def _row(number: int, nfe: bool) -> dict[str, Any]:
    row = {
        "codigo": f"PED-{number:06d}",
        "empresa": "000123",
        "cnpj": "12.345.678/0001-90",
        "chave_nfe": "35241112345678000190550010000012341000012345",
        "cliente": "Comércio São João Ltda",
        "emissao": "14/11/2024 12:01",
        "total": "1.234,56",
        "desconto": 12.5,
        "quantidade": 3,
        "status": "Faturado",
        "observacao": "entregar após as 14h: portão 2",
        "Itens pedido": [
            {"seq": seq, "produto": f"P-{seq:04d}", "preco": "99,90", "qtd": 1}
            for seq in range(1, 3)
        ],
    }
    if not nfe:
        del row["chave_nfe"]
    return row


def envelope(rows: int, nfe: bool = True) -> bytes:
    document = {
        "id": "evt-0193a1b2c3d4",
        "occurred_at": "2024-11-14T12:01:32-03:00",
        "operation": "upsert",
        "table": "Pedido",
        "rows": [_row(n, nfe) for n in range(rows)],
    }
    return json.dumps(document).encode()  # ensure_ascii: "S\u00e3o", as Python sends


_DIGITS_AS_ZERO = bytes(0x30 if 0x30 <= byte <= 0x39 else 0x20 for byte in range(256))


def before(body: bytes) -> Any:
    """ingest's ``decode_json`` before the strict decoder, for UTF-8 bodies."""
    if b"0" * 19 not in body.translate(_DIGITS_AS_ZERO):
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
    return json.loads(body.decode("utf-8").removeprefix("\ufeff"))


def _median_us(decode: Callable[[bytes], Any], body: bytes, rounds: int = 21) -> float:
    loops = max(200, 2_000_000 // max(len(body), 1))
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(loops):
            decode(body)
        samples.append((time.perf_counter() - started) / loops * 1e6)
    return statistics.median(samples)


def main() -> None:
    big_int = json.loads(envelope(2))
    big_int["rows"][0]["quantidade"] = 10**29
    bodies = {
        "1 row": envelope(1),
        "4 rows": envelope(4),
        "7 rows": envelope(7),
        "4 rows, no NF-e key (no 19-digit run)": envelope(4, nfe=False),
        "4 rows, 30-digit int (strict path)": json.dumps(
            {**json.loads(envelope(4)), "rows": big_int["rows"]}
        ).encode(),
    }
    readers: dict[str, Callable[[bytes], Any]] = {
        "orjson.loads": orjson.loads,
        "json.loads": json.loads,
        "before": before,
        "strict_json.loads": strict_json.loads,
    }
    print(f"{'body':<38}{'bytes':>7}" + "".join(f"{name:>20}" for name in readers))
    for label, body in bodies.items():
        figures = [_median_us(reader, body) for reader in readers.values()]
        print(f"{label:<38}{len(body):>7}" + "".join(f"{f:>17.1f} µs" for f in figures))


if __name__ == "__main__":
    main()

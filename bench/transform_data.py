"""Synthetic ERP traffic for ``bench/transform.py``: raw events as ingest writes them.

The stream imitates one Brazilian ERP sending its tables through Ponte's envelope, one
record per raw event (ingest splits each delivery's ``rows`` into record events, ids
``<delivery>/<index>``): salespeople, companies, contacts (some married to a contact that
arrives later: a forward reference the transform must park and resolve), products,
orders carrying their items as a nested child table, invoices carrying theirs, and the
generic code table. Values are written the way such ERPs write them (``1.234,56``,
``14/11/2024 10:30``, CNPJ and CPF with punctuation and valid check digits), and code
columns arrive both as plain codes and as ``$code`` objects.

Everything is deterministic for a given seed, so runs are comparable. ``expected_rows``
says how many CRM rows the stream must end up as (roots, children, distinct codes and the
placeholder products nobody sent), which the benchmark checks against the database: a
benchmark of a transform that loses rows would measure nothing.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from ponte.shared.events import Operation, RawEvent, delivery_id_for, erp_record_key
from ponte.shared.source_kinds import SourceKind

SOURCE_ID = "erp-bench"
BASE_TIME = datetime(2024, 11, 14, 8, 0, tzinfo=UTC)
DELIVERY_ROWS = 50
"""Rows per simulated webhook delivery (ingest turns each row into one raw event)."""

# Share of the generated events by table, after the code table and a first batch of
# master data. Orders and invoices dominate, as in a real ERP feed.
MIX: dict[str, float] = {
    "Vendedor": 0.01,
    "Empresa": 0.08,
    "Contato": 0.15,
    "Produto": 0.06,
    "Pedido": 0.45,
    "Nota": 0.25,
}
SPOUSE_SHARE = 0.3
"""Contacts that start a married pair (the spouse arrives 1-200 events later)."""
UNSENT_PRODUCT_SHARE = 0.01
"""Items whose product is never sent: the transform creates a placeholder product."""

CODE_TABLE: list[dict[str, str]] = [
    {"tabela": "REGIAO", "chave": "SE", "descricao": "Sudeste"},
    {"tabela": "REGIAO", "chave": "S", "descricao": "Sul"},
    {"tabela": "REGIAO", "chave": "NE", "descricao": "Nordeste"},
    {"tabela": "UF", "chave": "SP", "descricao": "São Paulo", "chave_pai": "SE",
     "tabela_pai": "REGIAO"},
    {"tabela": "UF", "chave": "RJ", "descricao": "Rio de Janeiro", "chave_pai": "SE",
     "tabela_pai": "REGIAO"},
    {"tabela": "UF", "chave": "PR", "descricao": "Paraná", "chave_pai": "S",
     "tabela_pai": "REGIAO"},
    {"tabela": "UF", "chave": "BA", "descricao": "Bahia", "chave_pai": "NE",
     "tabela_pai": "REGIAO"},
    {"tabela": "SEGMENTO", "chave": "IND", "descricao": "Indústria"},
    {"tabela": "SEGMENTO", "chave": "COM", "descricao": "Comércio"},
    {"tabela": "SEGMENTO", "chave": "SER", "descricao": "Serviços"},
    {"tabela": "SIT_PEDIDO", "chave": "AB", "descricao": "Aberto"},
    {"tabela": "SIT_PEDIDO", "chave": "AP", "descricao": "Aprovado"},
    {"tabela": "SIT_PEDIDO", "chave": "FA", "descricao": "Faturado"},
    {"tabela": "SIT_NOTA", "chave": "EM", "descricao": "Emitida"},
]  # fmt: skip
# Codes the rows use; AGR, CA (orders) and CA (invoices) are not in the code table above,
# so the transform creates them as placeholders.
SEGMENTS = ["IND", "COM", "SER", "AGR"]
ORDER_STATUSES = ["AB", "AP", "FA", "CA"]
INVOICE_STATUSES = ["EM", "CA"]

CITIES = [
    ("São Paulo", "SP", "01310-100"),
    ("Campinas", "SP", "13010-000"),
    ("Rio de Janeiro", "RJ", "20040-020"),
    ("Curitiba", "PR", "80010-000"),
    ("Salvador", "BA", "40020-000"),
]
FIRST_NAMES = ["Ana", "João", "Maria", "José", "Luíza", "Pedro", "Fernanda", "Carlos"]
LAST_NAMES = ["Silva", "Souza", "Oliveira", "Pereira", "Costa", "Rodrigues", "Almeida"]
UNITS = ["UN", "CX", "KG", "PC"]


def cpf(number: int) -> str:
    """A valid CPF (check digits computed) from a 9-digit base, formatted 000.000.000-00."""
    digits = [int(d) for d in f"{number % 1_000_000_000:09d}"]
    for weight_start in (10, 11):
        total = sum(d * w for d, w in zip(digits, range(weight_start, 1, -1), strict=False))
        digits.append(total * 10 % 11 % 10)
    text = "".join(map(str, digits))
    return f"{text[:3]}.{text[3:6]}.{text[6:9]}-{text[9:]}"


def cnpj(number: int, branch: int = 1) -> str:
    """A valid CNPJ (check digits computed) from an 8-digit base, formatted
    00.000.000/0000-00."""
    digits = [int(d) for d in f"{number % 100_000_000:08d}{branch:04d}"]
    for weights in ([5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2], [6, 5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2]):
        remainder = sum(d * w for d, w in zip(digits, weights, strict=True)) % 11
        digits.append(0 if remainder < 2 else 11 - remainder)
    text = "".join(map(str, digits))
    return f"{text[:2]}.{text[2:5]}.{text[5:8]}/{text[8:12]}-{text[12:]}"


def brl(cents: int) -> str:
    """Brazilian money text: 123456 -> ``1.234,56``."""
    whole, fraction = divmod(cents, 100)
    return f"{whole:,}".replace(",", ".") + f",{fraction:02d}"


@dataclass
class Dataset:
    """The stream, in the order it is produced, and what it must become."""

    events: list[RawEvent]
    expected_rows: Counter[str] = field(default_factory=Counter)
    """CRM rows per entity the stream must end up as."""
    source_rows: Counter[str] = field(default_factory=Counter)
    """Rows per ERP table (roots and nested children) as the source sent them."""
    references: Counter[str] = field(default_factory=Counter)
    """Reference values sent, by kind (code, spouse, parent ...): for the report."""

    @property
    def total_rows(self) -> int:
        return sum(self.expected_rows.values())

    def roots_by_table(self) -> dict[str, list[dict[str, Any]]]:
        """Each table's root rows with their nested child tables: dlt's input."""
        tables: dict[str, list[dict[str, Any]]] = {}
        for event in self.events:
            tables.setdefault(event.topic, []).append(event.payload)
        return tables


class _Generator:
    def __init__(self, events: int, seed: int) -> None:
        self.target = events
        self.rng = random.Random(seed)
        self.rows: list[tuple[str, dict[str, Any]]] = []
        self.queued: list[tuple[int, dict[str, Any]]] = []
        """Spouses waiting for their turn: (position to emit at, row)."""
        self.salespeople: list[str] = []
        self.companies: list[str] = []
        self.contacts: list[str] = []
        self.products: list[str] = []
        self.orders: list[str] = []
        self.counts: Counter[str] = Counter()
        self.unsent_products: set[str] = set()
        self.codes: set[tuple[str, str]] = set()
        self.references: Counter[str] = Counter()

    def next_code(self, prefix: str) -> str:
        self.counts[prefix] += 1
        return f"{prefix}-{self.counts[prefix]:06d}"

    def emit(self, table: str, row: dict[str, Any]) -> None:
        self.rows.append((table, row))
        while self.queued and self.queued[0][0] <= len(self.rows):
            self.rows.append(("Contato", self.queued.pop(0)[1]))

    def remaining(self) -> int:
        return self.target - len(self.rows) - len(self.queued)

    def code(self, table: str, key: str, *, as_object: bool) -> Any:
        self.codes.add((table, key))
        self.references["code"] += 1
        return {"$code": {"tabela": table, "chave": key}} if as_object else key

    def person(self) -> str:
        return f"{self.rng.choice(FIRST_NAMES)} {self.rng.choice(LAST_NAMES)}"

    def when(self, days_back: int = 30) -> datetime:
        return BASE_TIME - timedelta(minutes=self.rng.randrange(days_back * 24 * 60))

    # --- tables ------------------------------------------------------------------------

    def salesperson(self) -> None:
        code = self.next_code("VEN")
        name = self.person()
        self.salespeople.append(code)
        self.emit("Vendedor", {
            "codigo": code,
            "nome": name,
            "email": f"{name.split()[0].lower()}.{code.lower()}@empresa.com.br",
            "telefone": f"(11) 9{self.rng.randrange(1000, 9999)}-{self.rng.randrange(1000, 9999)}",
            "ativo": self.rng.choice(["S", "N", "sim"]),
        })  # fmt: skip

    def company(self) -> None:
        code = self.next_code("EMP")
        city, state, postal = self.rng.choice(CITIES)
        self.companies.append(code)
        self.references["salesperson"] += 1
        self.emit("Empresa", {
            "codigo": code,
            "cnpj": cnpj(10_000_000 + self.counts["EMP"] * 7919),
            "razao_social": f"Comercial {self.person()} Ltda",
            "nome_fantasia": f"Loja {self.counts['EMP']}",
            "email": f"contato@{code.lower()}.com.br",
            "telefone": f"(11) 3{self.rng.randrange(100, 999)}-{self.rng.randrange(1000, 9999)}",
            "endereco": f"Rua das Flores, {self.rng.randrange(1, 3000)}",
            "cidade": city,
            "uf": state,
            "cep": postal,
            "pais": "BR",
            "segmento": self.code("SEGMENTO", self.rng.choice(SEGMENTS), as_object=True),
            "vendedor": self.rng.choice(self.salespeople),
            "ativo": self.rng.choice(["S", "N"]),
        })  # fmt: skip

    def contact_row(self, code: str, spouse: str | None) -> dict[str, Any]:
        city, state, postal = self.rng.choice(CITIES)
        born = datetime(1950, 1, 1) + timedelta(days=self.rng.randrange(50 * 365))
        self.references["company"] += 1
        if spouse is not None:
            self.references["spouse"] += 1
        return {
            "codigo": code,
            "nome": self.person(),
            "cpf": cpf(100_000_000 + int(code.split("-")[1]) * 104_729),
            "email": f"{code.lower()}@cliente.com.br",
            "telefone": f"(21) 9{self.rng.randrange(1000, 9999)}-{self.rng.randrange(1000, 9999)}",
            "cargo": self.rng.choice(["Compras", "Diretor", "Financeiro", ""]),
            "data_nascimento": born.strftime("%d/%m/%Y"),
            "endereco": f"Av. Brasil, {self.rng.randrange(1, 5000)}",
            "cidade": city,
            "uf": state,
            "cep": postal,
            "empresa": self.rng.choice(self.companies),
            "conjuge": spouse,
        }

    def contact(self) -> None:
        code = self.next_code("CTT")
        if self.rng.random() < SPOUSE_SHARE and self.remaining() >= 2:
            # A married pair: the first names a spouse who has not arrived yet.
            spouse = self.next_code("CTT")
            self.contacts.append(code)
            self.emit("Contato", self.contact_row(code, spouse))
            later = self.contact_row(spouse, code)
            self.queued.append((len(self.rows) + self.rng.randrange(1, 200), later))
            self.queued.sort(key=lambda entry: entry[0])
            self.contacts.append(spouse)
            return
        self.contacts.append(code)
        self.emit("Contato", self.contact_row(code, None))

    def product(self) -> None:
        code = self.next_code("PRD")
        self.products.append(code)
        self.emit("Produto", {
            "codigo": code,
            "descricao": f"Produto {self.counts['PRD']} {self.rng.choice(['azul', 'verde', 'G'])}",
            "unidade": self.rng.choice(UNITS),
            "preco": brl(self.rng.randrange(100, 500_000)),
            "ativo": self.rng.choice(["sim", "não", "S"]),
        })  # fmt: skip

    def items(self, count: int) -> tuple[list[dict[str, Any]], int]:
        items = []
        total = 0
        for seq in range(1, count + 1):
            if self.rng.random() < UNSENT_PRODUCT_SHARE:
                product = f"PRD-X{self.rng.randrange(1000):04d}"
                self.unsent_products.add(product)
            else:
                product = self.rng.choice(self.products)
            self.references["product"] += 1
            quantity = self.rng.randrange(1, 50)
            price = self.rng.randrange(100, 200_000)
            total += quantity * price
            items.append({
                "seq": seq,
                "produto": product,
                "descricao": f"Item {seq} de {product}",
                "quantidade": str(quantity) if seq % 2 else f"{quantity},000",
                "preco": brl(price),
                "total": brl(quantity * price),
            })  # fmt: skip
        return items, total

    def order(self) -> None:
        code = self.next_code("PED")
        items, total = self.items(self.rng.randint(2, 10))
        issued = self.when()
        self.orders.append(code)
        self.references.update(["company", "contact", "salesperson"])
        self.emit("Pedido", {
            "codigo": code,
            "empresa": self.rng.choice(self.companies),
            "contato": self.rng.choice(self.contacts),
            "vendedor": self.rng.choice(self.salespeople),
            "emissao": issued.astimezone(UTC).strftime("%d/%m/%Y %H:%M"),
            "moeda": "BRL",
            "total": brl(total),
            "situacao": self.code(
                "SIT_PEDIDO", self.rng.choice(ORDER_STATUSES), as_object=self.rng.random() < 0.5
            ),
            "cancelamento": "",
            "Itens pedido": items,
        })  # fmt: skip

    def invoice(self) -> None:
        if not self.orders:
            self.order()
            return
        code = self.next_code("NF")
        items, total = self.items(self.rng.randint(1, 6))
        self.references.update(["company", "order"])
        self.emit("Nota", {
            "numero": code,
            "serie": str(self.rng.choice([1, 2])),
            "empresa": self.rng.choice(self.companies),
            "pedido": self.rng.choice(self.orders),
            "emissao": self.when().isoformat(),
            "total": brl(total),
            "situacao": self.code("SIT_NOTA", self.rng.choice(INVOICE_STATUSES), as_object=True),
            "Itens nota": items,
        })  # fmt: skip

    # --- the stream --------------------------------------------------------------------

    def generate(self) -> list[tuple[str, dict[str, Any]]]:
        for row in CODE_TABLE:
            self.codes.add((row["tabela"], row["chave"]))
            if "chave_pai" in row:
                self.references["code"] += 1
            self.emit("Tabela de tabelas", dict(row))
        # Enough master data for the first orders to refer to.
        for make, count in ((self.salesperson, 5), (self.company, 20), (self.product, 30)):
            for _ in range(count):
                make()
        for _ in range(20):
            self.contact()
        makers = {
            "Vendedor": self.salesperson,
            "Empresa": self.company,
            "Contato": self.contact,
            "Produto": self.product,
            "Pedido": self.order,
            "Nota": self.invoice,
        }
        tables = list(MIX)
        weights = [MIX[t] for t in tables]
        while self.remaining() > 0:
            makers[self.rng.choices(tables, weights)[0]]()
        for _, row in self.queued:
            self.rows.append(("Contato", row))
        self.queued.clear()
        return self.rows


ENTITY_OF = {
    "Tabela de tabelas": "code",
    "Vendedor": "salesperson",
    "Empresa": "company",
    "Contato": "contact",
    "Produto": "product",
    "Pedido": "order",
    "Nota": "invoice",
    "Itens pedido": "order_item",
    "Itens nota": "invoice_item",
}


def generate(events: int, seed: int = 20241114) -> Dataset:
    """``events`` raw events (one record each) in delivery order."""
    generator = _Generator(events, seed)
    rows = generator.generate()
    dataset = Dataset([], references=generator.references)
    for position, (table, row) in enumerate(rows):
        delivery, index = divmod(position, DELIVERY_ROWS)
        delivery_id = delivery_id_for(SOURCE_ID, f"bench-{delivery}")
        occurred = BASE_TIME + timedelta(seconds=delivery)
        dataset.events.append(
            RawEvent(
                event_id=f"{delivery_id}/{index}",
                delivery_id=delivery_id,
                index=index,
                count=DELIVERY_ROWS,
                source_id=SOURCE_ID,
                source_kind=SourceKind.ERP,
                source_event_id=f"bench-{delivery}",
                topic=table,
                operation=Operation.UPSERT,
                record_key=erp_record_key(table, row),
                occurred_at=occurred,
                received_at=occurred + timedelta(milliseconds=20),
                payload=row,
            )
        )
        dataset.source_rows[table] += 1
        dataset.expected_rows[ENTITY_OF[table]] += 1
        for child_table in ("Itens pedido", "Itens nota"):
            children = len(row.get(child_table, ()))
            if children:
                dataset.source_rows[child_table] += children
                dataset.expected_rows[ENTITY_OF[child_table]] += children
    # Codes used but never sent, and products never sent, become placeholder rows.
    dataset.expected_rows["code"] = len(generator.codes)
    dataset.expected_rows["product"] += len(generator.unsent_products)
    return dataset

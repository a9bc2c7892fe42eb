"""A second ERP, deliberately unlike the first: "Sistema Comercial", a Mexican ERP.

Nothing here imports Ponte. The generator invents the ERP's business facts (clients,
contacts, articles, sales orders with lines and partial deliveries, a code table with a
zone > province > city hierarchy), renders them the way this ERP posts them (its own
table and field names, US numbers ``1,234.50``, ``dd.mm.yyyy`` dates, ``X`` flags,
``$code`` objects where Ponte's default mapping expects none, a movement number
``nummov`` that orders changes made in the same minute), and computes, from the same
facts and never from Ponte's code, the CRM state those messages must end in.

What makes the feed hard, on purpose:

- **equal timestamps**: every change carries a minute, and many share one (a record
  changed twice in one minute is ordered only by ``nummov``);
- **deletes**: a client leaves with its contacts and orders; an order is cancelled by a
  delete; an order never sent is deleted (a tombstone for a row never seen);
- **repeats**: some deliveries are posted twice, byte for byte (same envelope id);
- **forward references**: an order is posted before its client, cities before their
  provinces, lines before their articles;
- **child levels**: orders > lines > deliveries (``entregas``, an entity of the model
  extension); a later version drops a line and a delivery and adds another.

The expected state is expressed in the CRM's entities and columns (the model extension
and the shipped model): ``Expected.live[table][natural key] = {column: typed value}``,
a reference given as the target's natural key (``"C-0001"``, ``"CIUDAD:MTY"``); every
other content column of the table must be NULL. ``Expected.tombstones[table]`` maps the
deleted roots' keys to the delete's time.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

SOURCE_ID = "sistema-comercial-mx"
ERP_ZONE = timezone(timedelta(hours=-6), "CST")
"""The ERP writes its local time (Mexico City) with the offset; see the report's note on
ERPs that write local times without one."""
START = datetime(2026, 12, 3, 8, 0, tzinfo=ERP_ZONE)
RECEIVED_AT = datetime(2026, 12, 3, 20, 0, tzinfo=UTC)

# -- the code table: zone > province > city, order statuses, client categories ---------

ZONES = {"NORTE": "Zona Norte", "OCCIDENTE": "Zona Occidente", "SURESTE": "Zona Sureste"}
PROVINCES = {  # code: (text, zone)
    "NL": ("Nuevo León", "NORTE"),
    "COAH": ("Coahuila", "NORTE"),
    "JAL": ("Jalisco", "OCCIDENTE"),
    "YUC": ("Yucatán", "SURESTE"),
}
CITIES = {  # code: (text, province)
    "MTY": ("Monterrey", "NL"),
    "SLT": ("Saltillo", "COAH"),
    "GDL": ("Guadalajara", "JAL"),
    "ZAP": ("Zapopan", "JAL"),
    "MID": ("Merida", "YUC"),  # corrected to "Mérida" in the same minute (below)
}
STATUSES = {"AB": "Abierto", "SU": "Surtido", "FA": "Facturado"}
CATEGORIES = {"A": "Mayorista", "B": "Minorista", "C": "Ocasional"}
ROLES = ["COMPRAS", "DIRECCION", "ALMACEN", "PAGOS"]
CURRENCIES = {"1": "MXN", "2": "USD", "3": "EUR"}
CARRIERS = ["Estafeta", "DHL", "Paquetexpress", ""]


@dataclass(frozen=True)
class CodeFact:
    group: str
    code: str
    text: str
    parent: tuple[str, str] | None


@dataclass(frozen=True)
class ClientFact:
    number: str
    legal_name: str
    trade_name: str
    rfc: str
    email: str
    phone: str | None
    city: str
    category: str
    credit_limit: Decimal
    payment_days: int
    blocked: bool
    last_purchase: date


@dataclass(frozen=True)
class ContactFact:
    number: str
    client: str
    first_name: str
    last_names: str
    email: str
    phone: str | None
    role: str
    birth_date: date | None


@dataclass(frozen=True)
class ArticleFact:
    key: str
    name: str
    unit: str
    price: Decimal
    weight: Decimal
    active: bool


@dataclass(frozen=True)
class DispatchFact:
    number: str
    on: date
    quantity: Decimal
    carrier: str | None
    delivered: bool


@dataclass(frozen=True)
class LineFact:
    number: int
    article: str
    description: str
    quantity: Decimal
    price: Decimal
    discount: Decimal
    dispatches: tuple[DispatchFact, ...] = ()

    @property
    def amount(self) -> Decimal:
        return (self.quantity * self.price * (1 - self.discount / 100)).quantize(Decimal("0.01"))


@dataclass(frozen=True)
class OrderFact:
    folio: str
    client: str
    status: str
    issued_at: datetime
    currency: str  # the ERP's code, "1"
    lines: tuple[LineFact, ...]
    notes: str = ""

    @property
    def total(self) -> Decimal:
        return sum((line.amount for line in self.lines), Decimal("0"))


@dataclass(frozen=True)
class LineCorrection:
    """A line posted on its own (the warehouse module corrects a price), naming its order
    by folio; it carries no deliveries, so it leaves the line's deliveries as they are."""

    folio: str
    line: LineFact


Fact = CodeFact | ClientFact | ContactFact | ArticleFact | OrderFact | LineCorrection


@dataclass(frozen=True)
class Change:
    """One version of one record: what the ERP changed, when, and its movement number."""

    table: str
    key: str
    minute: int
    nummov: int
    fact: Fact | None  # None: a delete

    @property
    def at(self) -> datetime:
        return START + timedelta(minutes=self.minute)


@dataclass
class Expected:
    live: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    tombstones: dict[str, dict[str, datetime]] = field(default_factory=dict)


@dataclass
class Feed:
    """The ERP's deliveries in the order it posts them (repeats included), and the state
    they must end in."""

    deliveries: list[dict[str, Any]]
    changes: list[Change]
    expected: Expected


# -- rendering: how this ERP writes values --------------------------------------------


def us_number(value: Decimal, places: int = 2) -> str:
    """``1,234.50``: commas group thousands, a point marks decimals."""
    return f"{value:,.{places}f}"


def erp_date(value: date | None) -> str:
    return "" if value is None else value.strftime("%d.%m.%Y")


def flag(value: bool) -> str:
    """The ERP's flags: ``X`` is yes, an empty string no."""
    return "X" if value else ""


def code_object(group: str, code: str) -> dict[str, Any]:
    return {"$code": {"tabela": group, "chave": code}}


def render(fact: Fact, nummov: int, variant: int) -> dict[str, Any]:
    """One row as the ERP posts it; ``variant`` picks between the forms it uses for the
    same thing (a status as a plain code or a ``$code``; a child table as a list or as
    ``{"table": ..., "rows": ...}``)."""
    match fact:
        case CodeFact():
            return _render_code(fact, nummov)
        case ClientFact():
            return {
                "num_cliente": fact.number,
                "razon_social": fact.legal_name,
                "nombre_comercial": fact.trade_name,
                "rfc": fact.rfc,
                "correo": fact.email,
                "telefono": fact.phone or "",
                "ciudad": code_object("CIUDAD", fact.city),
                "categoria": fact.category,
                "limite_credito": us_number(fact.credit_limit),
                "dias_pago": str(fact.payment_days),
                "bloqueado": flag(fact.blocked),
                "fecha_ult_compra": erp_date(fact.last_purchase),
                "nummov": nummov,
            }
        case ContactFact():
            return {
                "id_contacto": fact.number,
                "cliente": fact.client,
                "nombre": fact.first_name,
                "apellidos": fact.last_names,
                "correo": fact.email,
                "telefono": fact.phone or "",
                "puesto": code_object("PUESTO", fact.role),
                "fecha_nac": erp_date(fact.birth_date),
                "nummov": nummov,
            }
        case ArticleFact():
            return {
                "clave_art": fact.key,
                "descripcion": fact.name,
                "unidad": fact.unit.lower(),
                "precio_lista": us_number(fact.price),
                "peso": us_number(fact.weight, 3),
                "activo": flag(fact.active),
                "nummov": nummov,
            }
        case OrderFact():
            return _render_order(fact, nummov, variant)
        case LineCorrection():
            return {"folio": fact.folio, **_render_line(fact.line, False), "nummov": nummov}
    raise AssertionError(fact)


def _render_code(fact: CodeFact, nummov: int) -> dict[str, Any]:
    row: dict[str, Any] = {
        "grupo": fact.group,
        "codigo": fact.code,
        "texto": fact.text,
        "nummov": nummov,
    }
    if fact.parent is not None:
        group, code = fact.parent
        if fact.group == "CIUDAD":  # cities name their province as a $code object
            row["padre"] = code_object(group, code)
        else:  # provinces name their zone as a key and a group
            row["padre"], row["grupo_padre"] = code, group
    return row


def _render_line(line: LineFact, with_dispatches: bool = True) -> dict[str, Any]:
    rendered: dict[str, Any] = {
        "renglon": line.number,
        "articulo": line.article,
        "descripcion": line.description,
        "cantidad": us_number(line.quantity, 3),
        "precio": us_number(line.price),
        "descuento": us_number(line.discount),
        "importe": us_number(line.amount),
    }
    if line.dispatches and with_dispatches:
        rendered["entregas"] = {
            "table": "entregas",
            "rows": [
                {
                    "num_entrega": dispatch.number,
                    "fecha_entrega": erp_date(dispatch.on),
                    "cantidad": us_number(dispatch.quantity, 3),
                    "transportista": dispatch.carrier or "",
                    "entregado": flag(dispatch.delivered),
                }
                for dispatch in line.dispatches
            ],
        }
    return rendered


def _render_order(fact: OrderFact, nummov: int, variant: int) -> dict[str, Any]:
    lines = [_render_line(line) for line in fact.lines]
    return {
        "folio": fact.folio,
        "cliente": fact.client,
        "estado": code_object("ESTADO_PEDIDO", fact.status) if variant % 2 else fact.status,
        "fecha": fact.issued_at.strftime("%Y%m%d %H%M %z"),
        "moneda": fact.currency,
        "importe_total": us_number(fact.total),
        "observaciones": fact.notes,
        "nummov": nummov,
        "lineas": lines if variant % 3 else {"table": "lineas", "rows": lines},
    }


def delete_row(table: str, key: str, nummov: int) -> dict[str, Any]:
    """A delete names the key and the movement number only."""
    if table == "maestro_codigos":
        group, code = key.split(":")
        return {"grupo": group, "codigo": code, "nummov": nummov}
    return {KEY_FIELD[table]: key, "nummov": nummov}


KEY_FIELD = {
    "clientes": "num_cliente",
    "contactos": "id_contacto",
    "articulos": "clave_art",
    "pedidos_venta": "folio",
}


# -- the facts ---------------------------------------------------------------------------


class _Invent:
    """Random but plausible values, from one seed."""

    FIRST = ["Ana", "Luis", "María José", "Jorge", "Lucía", "Ramón", "Fernanda", "Héctor"]
    LAST = ["García López", "Hernández", "Martínez Ruiz", "de la Garza", "Ortega Sáenz"]
    COMPANY = ["Aceros", "Ferretería", "Distribuidora", "Abarrotes", "Plásticos", "Textiles"]
    PLACE = ["del Norte", "Regiomontana", "Tapatía", "Peninsular", "La Esperanza", "Hermanos"]
    GOODS = ["Tornillo", "Cable", "Lámina", "Tubo", "Pintura", "Cinta", "Bisagra"]

    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)

    def pick(self, items: list[str]) -> str:
        return self.random.choice(items)

    def money(self, low: int, high: int) -> Decimal:
        return Decimal(self.random.randint(low * 100, high * 100)) / 100

    def client(self, number: int) -> ClientFact:
        name = f"{self.pick(self.COMPANY)} {self.pick(self.PLACE)}"
        return ClientFact(
            number=f"C-{number:04d}",
            legal_name=f"{name} S.A. de C.V.",
            trade_name=name,
            rfc=f"{''.join(self.random.choices('ABCDEFGHJKLMNPRSTUVWXYZ', k=3))}"
            f"{self.random.randint(700101, 991231)}{self.random.choice('ABC')}{number % 10}9",
            email=f"ventas{number}@cliente{number}.com.mx",
            phone=None if number % 4 == 0 else f"81 {self.random.randint(1000, 9999)} 00{number}",
            city=self.pick(list(CITIES)),
            category=self.pick(list(CATEGORIES)),
            credit_limit=self.money(500, 2_500_000),
            payment_days=self.random.choice([0, 15, 30, 45, 60, 90]),
            blocked=self.random.random() < 0.3,
            last_purchase=date(2026, 1, 1) + timedelta(days=self.random.randint(0, 330)),
        )

    def contact(self, number: int, client: str) -> ContactFact:
        return ContactFact(
            number=f"CT-{number:05d}",
            client=client,
            first_name=self.pick(self.FIRST),
            last_names=self.pick(self.LAST),
            email=f"contacto{number}@cliente.com.mx",
            phone=None if number % 3 == 0 else f"33 {self.random.randint(1000, 9999)} {number:04d}",
            role=self.pick(ROLES),
            birth_date=None if number % 5 == 0 else date(1960 + number % 40, 1 + number % 12, 28),
        )

    def article(self, number: int) -> ArticleFact:
        return ArticleFact(
            key=f"ART-{number:03d}",
            name=f"{self.pick(self.GOODS)} {self.random.randint(1, 99)} mm",
            unit=self.random.choice(["pza", "kg", "m", "caja"]).upper(),
            price=self.money(1, 12_000),
            weight=Decimal(self.random.randint(1, 250_000)) / 1000,
            active=self.random.random() < 0.8,
        )

    def line(self, number: int, articles: list[str], folio: str, dispatches: int) -> LineFact:
        quantity = Decimal(self.random.randint(1, 250_000)) / 1000
        return LineFact(
            number=number,
            article=self.pick(articles),
            description=f"Renglón {number} del pedido {folio}",
            quantity=quantity,
            price=self.money(1, 2_000),
            discount=Decimal(self.random.choice([0, 5, 10, 12.5, 33])).quantize(Decimal("0.01")),
            dispatches=tuple(
                DispatchFact(
                    number=f"E{index}",
                    on=date(2026, 12, 1) + timedelta(days=index + self.random.randint(0, 9)),
                    quantity=(quantity / (dispatches or 1)).quantize(Decimal("0.001")),
                    carrier=self.pick(CARRIERS) or None,
                    delivered=self.random.random() < 0.5,
                )
                for index in range(1, dispatches + 1)
            ),
        )

    def order(self, number: int, client: str, articles: list[str], lines: int) -> OrderFact:
        folio = f"PV-{number:05d}"
        return OrderFact(
            folio=folio,
            client=client,
            status=self.pick(list(STATUSES)),
            issued_at=START + timedelta(hours=self.random.randint(-240, 0), minutes=15),
            currency=self.pick(list(CURRENCIES)),
            lines=tuple(
                self.line(index, articles, folio, self.random.randint(0, 2))
                for index in range(1, lines + 1)
            ),
            notes=self.pick(["", "Entregar por la mañana", "Cliente recoge"]),
        )


class _Feed:
    """Collects changes in posting order; each change is one delivery (codes: several
    rows per delivery), and some deliveries are posted twice."""

    def __init__(self) -> None:
        self.nummov = 1000
        self.changes: list[Change] = []
        self.deliveries: list[dict[str, Any]] = []

    def post(
        self,
        table: str,
        minute: int,
        items: Sequence[tuple[str, Fact | None]],
        *,
        held: list[dict[str, Any]] | None = None,
    ) -> None:
        """One delivery of ``table``: upserts (a fact) or deletes (None), one minute. With
        ``held``, the delivery is numbered now but posted later (appended to ``held``):
        a message that was stuck in the ERP's queue."""
        rows, operations = [], set()
        for key, fact in items:
            self.nummov += 1
            change = Change(table, key, minute, self.nummov, fact)
            self.changes.append(change)
            variant = self.nummov
            rows.append(
                delete_row(table, key, self.nummov)
                if fact is None
                else render(fact, self.nummov, variant)
            )
            operations.add("delete" if fact is None else "upsert")
        assert len(operations) == 1, "one delivery is all upserts or all deletes"
        (self.deliveries if held is None else held).append(
            {
                "id": f"SC-{self.nummov:07d}",
                "occurred_at": (START + timedelta(minutes=minute)).isoformat(),
                "operation": operations.pop(),
                "table": table,
                "rows": rows,
            }
        )

    def repeat_last(self) -> None:
        self.deliveries.append(dict(self.deliveries[-1]))


def generate(seed: int = 7, *, clients: int = 5, orders: int = 6, articles: int = 4) -> Feed:
    """The feed of one small day: codes, articles, clients with contacts, orders."""
    assert clients >= 3 and orders >= 4, "the scenarios below need at least these"
    invent = _Invent(seed)
    feed = _Feed()
    article_keys = [f"ART-{n:03d}" for n in range(1, articles + 1)]
    client_facts = [invent.client(n) for n in range(1, clients + 1)]
    leaving = client_facts[-1].number  # this client leaves: contacts and orders with it
    late = client_facts[-2]  # posted after an order that names it (a forward reference)

    order_facts = [
        invent.order(n, client_facts[n % clients].number, article_keys, 1 + n % 3)
        for n in range(1, orders + 1)
    ]
    # An order that names the late client and is posted first.
    first = invent.order(1, late.number, article_keys, 1)
    order_facts[0] = OrderFact(
        **{
            **vars(first),
            "lines": tuple(
                invent.line(n, article_keys, first.folio, dispatches)
                for n, dispatches in ((1, 2), (2, 1), (3, 1))
            ),
        }
    )
    order_facts[1] = invent.order(2, leaving, article_keys, 2)

    # Cities before their provinces, provinces before their zones, all in minute 0.
    cities = [
        (f"CIUDAD:{code}", CodeFact("CIUDAD", code, text, ("PROVINCIA", province)))
        for code, (text, province) in CITIES.items()
    ]
    feed.post("maestro_codigos", 0, cities)
    feed.post(
        "maestro_codigos",
        0,
        [
            (f"PROVINCIA:{code}", CodeFact("PROVINCIA", code, text, ("ZONA", zone)))
            for code, (text, zone) in PROVINCES.items()
        ],
    )
    feed.post(
        "maestro_codigos",
        0,
        [(f"ZONA:{code}", CodeFact("ZONA", code, text, None)) for code, text in ZONES.items()]
        + [
            (f"ESTADO_PEDIDO:{code}", CodeFact("ESTADO_PEDIDO", code, text, None))
            for code, text in STATUSES.items()
        ]
        + [
            (f"CATEGORIA_CLIENTE:{code}", CodeFact("CATEGORIA_CLIENTE", code, text, None))
            for code, text in CATEGORIES.items()
        ],
    )
    # Same minute, corrected text: only nummov says which is newer.
    feed.post(
        "maestro_codigos",
        0,
        [("CIUDAD:MID", CodeFact("CIUDAD", "MID", "Mérida", ("PROVINCIA", "YUC")))],
    )

    # The forward reference: an order of a client not posted yet; its lines name
    # articles not posted yet either.
    feed.post("pedidos_venta", 1, [(order_facts[0].folio, order_facts[0])])

    article_facts = [invent.article(n) for n in range(1, articles + 1)]
    feed.post("articulos", 1, [(a.key, a) for a in article_facts])
    repriced = ArticleFact(**{**vars(article_facts[0]), "price": article_facts[0].price + 1})
    feed.post("articulos", 1, [(repriced.key, repriced)])  # same minute, newer nummov

    for fact in client_facts:
        if fact is not late:
            feed.post("clientes", 1, [(fact.number, fact)])
    feed.repeat_last()  # the ERP re-posts a delivery it thinks failed
    # A correction in the same minute: another limit, now blocked.
    corrected = ClientFact(
        **{**vars(client_facts[0]), "credit_limit": Decimal("1234.50"), "blocked": True}
    )
    feed.post("clientes", 1, [(corrected.number, corrected)])

    contact_facts = [
        invent.contact(n, client_facts[n % clients].number) for n in range(1, clients + 3)
    ]
    feed.post("contactos", 2, [(c.number, c) for c in contact_facts])

    for order in order_facts[1:]:
        feed.post("pedidos_venta", 2, [(order.folio, order)])
    # Corrections of the first order's lines 2 and 3 made between its two versions, stuck
    # in the ERP's queue and posted last: older than the version that replaced the
    # order's lines (which dropped line 3), so they change nothing.
    first = order_facts[0]
    held: list[dict[str, Any]] = []
    for stale in first.lines[1:]:
        corrected_line = LineFact(**{**vars(stale), "price": stale.price + 7})
        feed.post(
            "lineas",
            1,
            [(f"{first.folio}/{stale.number}", LineCorrection(first.folio, corrected_line))],
            held=held,
        )
    # The first order changes in the minute it was first sent (only nummov orders the
    # two): a line dropped, line 1's second delivery dropped, a delivery added on line 2.
    line1, line2 = first.lines[0], first.lines[1]
    added = DispatchFact("E9", date(2026, 12, 9), Decimal("0.500"), "DHL", False)
    revised = OrderFact(
        **{
            **vars(first),
            "status": "SU",
            "lines": (
                LineFact(**{**vars(line1), "dispatches": line1.dispatches[:1]}),
                LineFact(**{**vars(line2), "dispatches": (*line2.dispatches, added)}),
            ),
        }
    )
    feed.post("pedidos_venta", 1, [(revised.folio, revised)])
    feed.repeat_last()

    feed.post("clientes", 3, [(late.number, late)])  # the late client, at last

    _later_changes(feed, client_facts, order_facts, article_facts, leaving)

    # Deletes: orders cancelled; the leaving client with its contacts and orders; an
    # order the ERP deletes that it never posted.
    cancelled = [o.folio for n, o in enumerate(order_facts) if n == 2 or (n > 2 and n % 9 == 0)]
    feed.post("pedidos_venta", 4, [(folio, None) for folio in cancelled])
    leaving_orders = [o.folio for o in order_facts if o.client == leaving]
    leaving_contacts = [c.number for c in contact_facts if c.client == leaving]
    feed.post("pedidos_venta", 5, [(folio, None) for folio in leaving_orders])
    feed.post("contactos", 5, [(number, None) for number in leaving_contacts])
    feed.post("clientes", 5, [(leaving, None)])
    feed.post("pedidos_venta", 5, [("PV-99999", None)])
    feed.repeat_last()
    # A live order's first line corrected on its own, after the order's last version: it
    # wins, and the line keeps its deliveries.
    corrected_order = next(
        o
        for o in order_facts[3:]
        if o.client != leaving
        and o.folio not in cancelled
        and all(c.key != o.folio for c in feed.changes if c.minute == 4)
    )
    line = corrected_order.lines[0]
    fresh = LineFact(**{**vars(line), "price": line.price + 3, "discount": Decimal("2.50")})
    feed.post(
        "lineas", 5, [(f"{corrected_order.folio}/1", LineCorrection(corrected_order.folio, fresh))]
    )
    feed.deliveries += held
    return Feed(feed.deliveries, feed.changes, expected_state(feed.changes))


def _later_changes(
    feed: _Feed,
    clients: list[ClientFact],
    orders: list[OrderFact],
    articles: list[ArticleFact],
    leaving: str,
) -> None:
    """Minute 3 and 4: a client moves to another city (a new ``$code``), an order moves to
    another client and gains a bonus line with a negative price, an article is deleted
    and created again under the same key."""
    moved_client = ClientFact(**{**vars(clients[1]), "city": "ZAP", "payment_days": 120})
    feed.post("clientes", 4, [(moved_client.number, moved_client)])
    moved = next(o for o in reversed(orders[3:]) if o.client != leaving)
    new_client = clients[2] if moved.client == clients[1].number else clients[1]
    bonus = LineFact(
        len(moved.lines) + 1,
        articles[0].key,
        "Bonificación por volumen",
        Decimal("1.000"),
        Decimal("-150.00"),
        Decimal("0.00"),
    )
    reassigned = OrderFact(
        **{**vars(moved), "client": new_client.number, "lines": (*moved.lines, bonus)}
    )
    feed.post("pedidos_venta", 4, [(reassigned.folio, reassigned)])
    gone = articles[-1]
    feed.post("articulos", 3, [(gone.key, None)])
    back = ArticleFact(**{**vars(gone), "name": f"{gone.name} (nuevo)", "active": True})
    feed.post("articulos", 4, [(back.key, back)])


# -- the expected state: from the facts, by the ERP's own rules ---------------------------

TABLES = {
    "lineas": "order_items",
    "maestro_codigos": "codes",
    "clientes": "companies",
    "contactos": "contacts",
    "articulos": "products",
    "pedidos_venta": "orders",
}


def expected_state(changes: list[Change]) -> Expected:
    """The newest version of each record, by (minute, nummov), wins; a deleted record is
    a tombstone and its children are gone; a child is what its parent's newest version
    carries."""
    newest: dict[tuple[str, str], Change] = {}
    for change in changes:
        seen = newest.get((change.table, change.key))
        if seen is None or (change.minute, change.nummov) > (seen.minute, seen.nummov):
            newest[(change.table, change.key)] = change
    expected = Expected(
        live={name: {} for name in [*TABLES.values(), "order_items", "dispatches"]},
        tombstones={name: {} for name in TABLES.values() if name != "order_items"},
    )
    for (table, key), change in sorted(newest.items()):
        if table == "lineas":
            continue  # below, once the orders' lines are known
        name = TABLES[table]
        if change.fact is None:
            expected.tombstones[name][key] = change.at
            continue
        _expect(expected, change.fact)
    for (table, key), change in sorted(newest.items()):
        if table == "lineas":
            _expect_correction(expected, change, newest[("pedidos_venta", key.split("/")[0])])
    return expected


def _expect_correction(expected: Expected, change: Change, order: Change) -> None:
    """A line posted on its own wins when it is newer than its order's newest version (the
    version that last replaced the order's lines), and keeps the deliveries that version
    gave the line; an older one changes nothing."""
    assert isinstance(change.fact, LineCorrection)
    if (change.minute, change.nummov) < (order.minute, order.nummov):
        return
    assert order.fact is not None, "the generator never corrects a line of a deleted order"
    line_key = f"{change.fact.folio}/{change.fact.line.number}"
    kept = expected.live["order_items"][line_key]  # the generator corrects carried lines
    kept.update(_line_columns(change.fact.folio, change.fact.line))


def _expect(expected: Expected, fact: Fact) -> None:
    live = expected.live
    match fact:
        case CodeFact():
            live["codes"][f"{fact.group}:{fact.code}"] = {
                "list_name": fact.group,
                "code": fact.code,
                "description": fact.text,
                "parent_id": None if fact.parent is None else ":".join(fact.parent),
            }
        case ClientFact():
            live["companies"][fact.number] = {
                "code": fact.number,
                "legal_name": fact.legal_name,
                "trade_name": fact.trade_name,
                "document": fact.rfc,
                "email": fact.email,
                "phone": fact.phone,
                "city_id": f"CIUDAD:{fact.city}",
                "category_id": f"CATEGORIA_CLIENTE:{fact.category}",
                "credit_limit": fact.credit_limit,
                "payment_terms_days": fact.payment_days,
                "blocked": fact.blocked,
                "last_purchase_on": fact.last_purchase,
            }
        case ContactFact():
            live["contacts"][fact.number] = {
                "code": fact.number,
                "company_id": fact.client,
                "name": f"{fact.first_name} {fact.last_names}",
                "email": fact.email,
                "phone": fact.phone,
                "role": fact.role,
                "birth_date": fact.birth_date,
            }
        case ArticleFact():
            live["products"][fact.key] = {
                "code": fact.key,
                "name": fact.name,
                "unit": fact.unit,
                "price": fact.price,
                "weight_kg": fact.weight,
                "active": fact.active,
            }
        case OrderFact():
            _expect_order(expected, fact)


def _expect_order(expected: Expected, fact: OrderFact) -> None:
    live = expected.live
    live["orders"][fact.folio] = {
        "code": fact.folio,
        "company_id": fact.client,
        "status_id": f"ESTADO_PEDIDO:{fact.status}",
        "issued_at": fact.issued_at,
        "currency": CURRENCIES[fact.currency],
        "total": fact.total,
    }
    for line in fact.lines:
        line_key = f"{fact.folio}/{line.number}"
        live["order_items"][line_key] = _line_columns(fact.folio, line)
        for dispatch in line.dispatches:
            live["dispatches"][f"{line_key}/{dispatch.number}"] = {
                "order_item_id": line_key,
                "code": dispatch.number,
                "dispatched_on": dispatch.on,
                "quantity": dispatch.quantity,
                "carrier": dispatch.carrier,
                "delivered": dispatch.delivered,
            }


def _line_columns(folio: str, line: LineFact) -> dict[str, Any]:
    return {
        "order_id": folio,
        "line_number": line.number,
        "product_id": line.article,
        "description": line.description,
        "quantity": line.quantity,
        "unit_price": line.price,
        "discount_pct": line.discount,
        "total": line.amount,
    }

"""Property expressions: a target property computed from a change's row, in YAML.

Used by ``kind: rest`` objects (``RestObject.properties``; docs/connectors/rest.md):

```yaml
first_name: {template: "{name}", split: first}            # or split: {separator: "-", part: rest}
full_address: {template: "{street}, {city} - {state}"}
stage: {column: status_code, values: {AP: won, CA: lost}, unknown: default, default: open}
phone: {column: phone, phone: E164, region: BR}
country: {column: country, country: alpha2}               # "Brasil", "BRA" -> "BR"
email: {column: email, required: true}
```

Steps, in this order: the value (``column``, or ``template`` filled from the row, as the
transform's ``computed`` templates are: ``ponte.shared.value_rules``), ``split``, the
value map (``values``/``unknown``/``default``, the same rule as the transform's mapping
files), ``default`` for a blank value, ``phone`` or ``country``, then ``required``.

A value that cannot be converted (a phone that is no number for the region, a country no
ISO list knows, a value the map does not list under ``unknown: refuse``) or a required
property without a value raises ``PropertyRefused`` naming the property and the reason:
the record is refused, terminally (the same row fails the same way on every retry), and
dead-lettered; never sent with a guessed or blank value.
"""

from __future__ import annotations

from functools import cache
from typing import Any, Literal

import phonenumbers
import pycountry
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ponte.shared.parsers import ParseError
from ponte.shared.value_rules import PLACEHOLDER, Unknown, blank, fill_template, map_value

Part = Literal["first", "rest", "last"]


class PropertyRefused(ValueError):
    """A record's property cannot be computed: the record is refused, not sent."""


class Split(BaseModel):
    """Cut the value on ``separator`` (runs of whitespace by default) and keep a part:
    ``first`` ("Maria"), ``rest`` ("da Silva"), ``last`` ("Silva") of "Maria da Silva".

    Named ``separator``, not ``on``: YAML 1.1 (PyYAML) reads a bare ``on`` key as true."""

    model_config = ConfigDict(extra="forbid")

    separator: str | None = Field(default=None, min_length=1)
    part: Part

    @model_validator(mode="before")
    @classmethod
    def _yaml_on(cls, data: Any) -> Any:
        if isinstance(data, dict) and True in data:
            raise ValueError("write 'separator:' ('on:' reads as true in YAML)")
        return data

    def apply(self, text: str) -> str | None:
        cut = text.split(self.separator) if self.separator else text.split()
        pieces = [p.strip() for p in cut]
        pieces = [p for p in pieces if p]
        if not pieces:
            return None
        if self.part == "first":
            return pieces[0]
        if self.part == "last":
            return pieces[-1]
        joiner = self.separator or " "
        return joiner.join(pieces[1:]) or None  # one word has no rest: null, not the word


class PropertyExpression(BaseModel):
    model_config = ConfigDict(extra="forbid")

    column: str | None = None
    template: str | None = None
    split: Split | None = None
    values: dict[str, Any] | None = None
    unknown: Unknown = "refuse"
    default: Any = None
    phone: Literal["E164"] | None = None
    region: str | None = Field(default=None, pattern=r"^[A-Z]{2}$")
    """The country a number without ``+`` is read in (``BR``)."""
    country: Literal["alpha2", "alpha3"] | None = None
    required: bool = False

    @model_validator(mode="before")
    @classmethod
    def _split_shorthand(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("split"), str):
            return {**data, "split": {"part": data["split"]}}
        return data

    @model_validator(mode="after")
    def _coherent(self) -> PropertyExpression:
        if (self.column is None) == (self.template is None):
            raise ValueError("give exactly one of column and template")
        if self.template is not None and not PLACEHOLDER.search(self.template):
            raise ValueError(f"template {self.template!r} names no {{column}}")
        if self.unknown == "default" and self.default is None:
            raise ValueError("unknown: default needs a default")
        if self.unknown != "refuse" and self.values is None:
            raise ValueError("unknown is for a value map: set values")
        if self.phone is not None and self.country is not None:
            raise ValueError("phone and country: give one")
        if self.phone is not None and self.region is None:
            raise ValueError("phone: set region, the country a number without + is read in")
        if self.region is not None and self.phone is None:
            raise ValueError("region is for phone")
        if self.region is not None and self.region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"region {self.region!r} is not a phone region phonenumbers knows")
        return self

    def columns(self) -> list[str]:
        """The row's columns this expression reads (checked against the model at load)."""
        return [self.column] if self.column is not None else PLACEHOLDER.findall(str(self.template))

    def evaluate(self, row: dict[str, Any], where: str) -> Any:
        """The property's value from ``row``; ``where`` names it in a refusal."""
        try:
            return self._evaluate(row)
        except (ParseError, PropertyRefused) as error:
            raise PropertyRefused(f"{where}: {error}") from None

    def _evaluate(self, row: dict[str, Any]) -> Any:
        if self.column is not None:
            value = row.get(self.column)
        else:
            value = fill_template(str(self.template), row)
        if self.split is not None and not blank(value):
            value = self.split.apply(str(value))
        if self.values is not None:
            value = map_value(value, self.values, self.unknown, self.default)
        if blank(value) and self.default is not None:
            value = self.default
        if not blank(value) and self.phone is not None:
            value = to_e164(str(value), str(self.region))
        if not blank(value) and self.country is not None:
            value = country_code(str(value), self.country)
        if self.required and blank(value):
            raise PropertyRefused(f"required, and the row has no value for {self._source()}")
        return value

    def _source(self) -> str:
        return repr(self.column) if self.column is not None else f"template {self.template!r}"


def to_e164(text: str, region: str) -> str:
    """``+5511987654321`` from "(11) 98765-4321" read in ``region``; refused (never sent as
    typed) when it is not a valid number there."""
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        number = None
    if number is None or not phonenumbers.is_valid_number(number):
        raise PropertyRefused(f"{text!r} is not a valid phone number for region {region}")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def country_code(text: str, kind: Literal["alpha2", "alpha3"]) -> str:
    """The ISO 3166-1 code of a country written as a code ("BR", "BRA"), an English name
    ("Brazil"), or a common/local name ``pycountry`` does not list ("Brasil", in
    ``LOCAL_NAMES``); refused when none matches. No fuzzy matching: a guess could be
    another country."""
    key = text.strip().casefold()
    alpha2 = LOCAL_NAMES.get(key) or _by_name().get(key)
    if alpha2 is None:
        raise PropertyRefused(f"{text!r} is not a country ISO 3166 knows by code or name")
    country = pycountry.countries.get(alpha_2=alpha2)
    assert country is not None
    return str(country.alpha_2 if kind == "alpha2" else country.alpha_3)


LOCAL_NAMES: dict[str, str] = {
    # Portuguese and Spanish names of the countries Ponte's sources mostly send, which
    # ISO's English names do not cover. Extend here: an exact table, never a guess.
    "brasil": "BR",
    "alemanha": "DE",
    "espanha": "ES",
    "españa": "ES",
    "estados unidos": "US",
    "eua": "US",
    "frança": "FR",
    "inglaterra": "GB",
    "reino unido": "GB",
    "itália": "IT",
    "japão": "JP",
    "méxico": "MX",
    "paraguai": "PY",
    "peru": "PE",
    "uruguai": "UY",
    "argentina": "AR",
    "chile": "CL",
    "colômbia": "CO",
    "bolívia": "BO",
    "portugal": "PT",
}


@cache
def _by_name() -> dict[str, str]:
    """Every code and name pycountry has (alpha-2, alpha-3, name, official and common
    name), case-folded, to the alpha-2 code."""
    names: dict[str, str] = {}
    for country in pycountry.countries:
        for attribute in ("alpha_2", "alpha_3", "name", "official_name", "common_name"):
            value = getattr(country, attribute, None)
            if value:
                names[str(value).casefold()] = str(country.alpha_2)
    return names

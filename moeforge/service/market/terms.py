"""A listing's terms: its licence (an SPDX id, or a custom licence with its text and terms), price and visibility.

Money is integer micro-units of the Centre's currency (1 unit = 1,000,000 micros), never floats.
A price is per million routed tokens (usage.py says what a routed token is) or flat per export.
Visibility follows Hugging Face gated repositories: public (anyone may take a grant at once),
gated (the owner approves each request) or private (only the owner sees it).
"""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from moeforge.library.entry import SPDX_LICENSES, check_license

MICROS = 1_000_000
MAX_PRICE_MICROS = 10**15  # a billion units: anything above is a typo
Visibility = Literal["public", "gated", "private"]
PriceKind = Literal["free", "per_mtok", "per_export"]
SPDX_URL = "https://spdx.org/licenses/{id}.html"


class CustomLicence(BaseModel):
    """A licence of the owner's own words, with the four terms a buyer filters on spelled out."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=r"LicenseRef-[A-Za-z0-9.-]{1,64}")
    text: str = Field(min_length=20, max_length=65_536)
    commercial_use: bool
    redistribution: bool
    attribution: bool
    field_of_use: str | None = Field(None, max_length=500)  # e.g. "healthcare operations only"


class Licence(BaseModel):
    """Exactly one of `spdx` (an id moeforge knows) and `custom`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    spdx: str | None = None
    custom: CustomLicence | None = None

    @field_validator("spdx")
    @classmethod
    def _known(cls, value: str | None) -> str | None:
        if value is not None and (value.startswith("LicenseRef-") or check_license(value) not in SPDX_LICENSES):
            raise ValueError(f"{value!r}: a LicenseRef- licence is given as `custom`, with its text and terms")
        return value

    @model_validator(mode="after")
    def _one(self) -> "Licence":
        if (self.spdx is None) == (self.custom is None):
            raise ValueError("give exactly one of `spdx` (an SPDX id) and `custom` (name, text and terms)")
        return self

    @property
    def id(self) -> str:
        return self.spdx or self.custom.name

    def text(self) -> str:
        """The licence as a bundle carries it."""
        if self.custom is not None:
            c = self.custom
            terms = (f"commercial use: {'yes' if c.commercial_use else 'no'}; redistribution: {'yes' if c.redistribution else 'no'}; "
                     f"attribution required: {'yes' if c.attribution else 'no'}; field of use: {c.field_of_use or 'any'}")
            return f"{c.name}\n\n{terms}\n\n{c.text.rstrip()}\n"
        return (f"SPDX-License-Identifier: {self.spdx}\n\nThe full text of this licence is published at "
                f"{SPDX_URL.format(id=self.spdx)}.\n")


class Price(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: PriceKind = "free"
    micros: int = Field(0, ge=0, le=MAX_PRICE_MICROS)  # per million routed tokens, or per export

    @model_validator(mode="after")
    def _consistent(self) -> "Price":
        if (self.kind == "free") != (self.micros == 0):
            raise ValueError("a free price has micros 0, and a paid one (per_mtok, per_export) more than 0")
        return self

    def describe(self) -> str:
        if self.kind == "free":
            return "free"
        unit = "per million routed tokens" if self.kind == "per_mtok" else "per export"
        return f"{units(self.micros)} {unit}"


class Terms(BaseModel):
    """What a grant was given on: a copy of the listing's licence and price at that moment."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    licence: Licence
    price: Price


def units(micros: int) -> str:
    """12_345_678 → '12.345678' (exact: integer arithmetic)."""
    sign = "-" if micros < 0 else ""
    whole, part = divmod(abs(micros), MICROS)
    return f"{sign}{whole}.{part:06d}"

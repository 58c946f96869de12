"""The pricing models, as pure exact arithmetic: what a billed quantity costs under a price's terms.

- `unit`: billed quantity x unitPrice.
- `package`: ceil(billed quantity / packageSize) x packagePrice (per started minute, per 15-second block).
- `graduated`: each unit at the price of the tier its place in the month falls in; `position` is the
  month's cumulative billed quantity before this item, so one item may span tiers.
Any model may set a minimum quantity: each event's item is billed at least that quantity.
"""
from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from typing import Any

from billing_core import money
from billing_core.errors import ValidationFailed

UNIT, PACKAGE, GRADUATED = "unit", "package", "graduated"
MODELS = (UNIT, PACKAGE, GRADUATED)
MAX_TIERS = 50
ZERO = Decimal(0)


@dataclass(frozen=True)
class Tier:
    up_to: Decimal | None  # None: the open last tier
    unit_price: Decimal


@dataclass(frozen=True)
class Terms:
    """A price's terms, already scaled by any multiplier."""
    pricing_model: str = UNIT
    unit_price: Decimal | None = None
    package_size: Decimal | None = None
    package_price: Decimal | None = None
    minimum_quantity: Decimal | None = None
    tiers: tuple[Tier, ...] = ()

    def scaled(self, multiplier: Decimal) -> Terms:
        """Every price of the terms times `multiplier`, exactly (quantities are not scaled)."""
        def scale(value: Decimal | None) -> Decimal | None:
            return None if value is None else money.normalize(money.multiply(value, multiplier))
        return Terms(self.pricing_model, scale(self.unit_price), self.package_size, scale(self.package_price),
                     self.minimum_quantity, tuple(Tier(t.up_to, scale(t.unit_price)) for t in self.tiers))  # type: ignore[arg-type]

    @property
    def is_plain(self) -> bool:
        """quantity x unit price, nothing more: such items record no breakdown."""
        return self.pricing_model == UNIT and not self.minimum_quantity


@dataclass(frozen=True)
class Part:
    """A piece of an item's price that an invoice line shows: quantity x unit price = amount.
    For packages the quantity is the number of packages and the unit one package."""
    quantity: Decimal
    unit_price: Decimal
    amount: Decimal
    package_size: Decimal | None = None


@dataclass(frozen=True)
class Rated:
    billed_quantity: Decimal
    amount: Decimal
    parts: tuple[Part, ...]


def billed_quantity(terms: Terms, quantity: Decimal) -> Decimal:
    if terms.minimum_quantity is not None and quantity < terms.minimum_quantity:
        return terms.minimum_quantity
    return quantity


def rate(terms: Terms, quantity: Decimal, position: Decimal = ZERO) -> Rated:
    """What `quantity` costs under `terms`, starting at `position` in the month (graduated only)."""
    billed = billed_quantity(terms, quantity)
    if terms.pricing_model == UNIT:
        assert terms.unit_price is not None
        amount = money.multiply(billed, terms.unit_price)
        return Rated(billed, amount, (Part(billed, terms.unit_price, amount),))
    if terms.pricing_model == PACKAGE:
        assert terms.package_size is not None and terms.package_price is not None
        packages = packages_for(billed, terms.package_size)
        amount = money.multiply(packages, terms.package_price)
        return Rated(billed, amount, (Part(packages, terms.package_price, amount, terms.package_size),))
    return _graduated(terms, billed, position)


def packages_for(quantity: Decimal, size: Decimal) -> Decimal:
    """ceil(quantity / size), exactly: the quotient is rounded up to an integer, never to a digit."""
    if quantity == 0:
        return ZERO
    packages = (quantity / size).to_integral_value(rounding=ROUND_CEILING)
    # the division may round, but only past the integer: check the result and step if it is off by one
    while money.multiply(packages, size) < quantity:
        packages += 1
    while packages > 1 and money.multiply(packages - 1, size) >= quantity:
        packages -= 1
    return packages


def _graduated(terms: Terms, billed: Decimal, position: Decimal) -> Rated:
    parts: list[Part] = []
    start, left, floor = position, billed, ZERO
    for tier in terms.tiers:
        if left == 0:
            break
        if tier.up_to is not None and start >= tier.up_to:
            floor = tier.up_to
            continue
        room = left if tier.up_to is None else min(left, money.subtract(tier.up_to, max(start, floor)))
        if room > 0:
            parts.append(Part(room, tier.unit_price, money.multiply(room, tier.unit_price)))
            start, left = money.add(start, room), money.subtract(left, room)
        floor = tier.up_to if tier.up_to is not None else floor
    return Rated(billed, money.total(p.amount for p in parts), tuple(parts))


# --- validation -------------------------------------------------------------------------------------

def _amount(value: Any, field: str, *, positive: bool = False, maximum: Decimal = money.MAX_AMOUNT) -> Decimal:
    try:
        return money.bounded(money.to_decimal(value), maximum=maximum, allow_zero=not positive)
    except money.InvalidAmount as exc:
        raise ValidationFailed(field, str(exc)) from None


def terms_from_request(pricing_model: str | None, *, unit_price: Any, package_size: Any, package_price: Any,
                       minimum_quantity: Any, tiers: Any) -> Terms:
    """Check a catalog price's terms; each bad input is a ValidationFailed naming its field."""
    model = pricing_model or UNIT
    if model not in MODELS:
        raise ValidationFailed("pricingModel", f"must be one of {', '.join(MODELS)}")
    present = {"unitPrice": unit_price, "packageSize": package_size, "packagePrice": package_price, "tiers": tiers}
    wanted = {UNIT: ("unitPrice",), PACKAGE: ("packageSize", "packagePrice"), GRADUATED: ("tiers",)}[model]
    for name, value in present.items():
        if name in wanted and value is None:
            raise ValidationFailed(name, f"is required for the {model} model")
        if name not in wanted and value is not None:
            raise ValidationFailed(name, f"is not used by the {model} model")
    minimum = None if minimum_quantity is None else _amount(minimum_quantity, "minimumQuantity",
                                                            maximum=money.MAX_QUANTITY)
    if model == UNIT:
        return Terms(UNIT, unit_price=_amount(unit_price, "unitPrice"), minimum_quantity=minimum)
    if model == PACKAGE:
        return Terms(PACKAGE, package_size=_amount(package_size, "packageSize", positive=True,
                                                   maximum=money.MAX_QUANTITY),
                     package_price=_amount(package_price, "packagePrice"), minimum_quantity=minimum)
    return Terms(GRADUATED, tiers=_tiers(tiers), minimum_quantity=minimum)


def _tiers(value: Any) -> tuple[Tier, ...]:
    if not isinstance(value, list) or not value:
        raise ValidationFailed("tiers", "must be a non-empty list of {upTo, unitPrice}")
    if len(value) > MAX_TIERS:
        raise ValidationFailed("tiers", f"must have at most {MAX_TIERS} tiers")
    found: list[Tier] = []
    for index, tier in enumerate(value):
        field = f"tiers[{index}]"
        if not isinstance(tier, dict) or set(tier) - {"upTo", "unitPrice"} or "unitPrice" not in tier \
                or "upTo" not in tier:
            raise ValidationFailed(field, "must be an object with upTo and unitPrice")
        last = index == len(value) - 1
        if tier["upTo"] is None and not last:
            raise ValidationFailed(f"{field}.upTo", "only the last tier is open (upTo null)")
        if tier["upTo"] is not None and last:
            raise ValidationFailed(f"{field}.upTo", "the last tier must be open (upTo null)")
        up_to = None if tier["upTo"] is None else _amount(tier["upTo"], f"{field}.upTo", positive=True,
                                                          maximum=money.MAX_QUANTITY)
        if up_to is not None and found and found[-1].up_to is not None and up_to <= found[-1].up_to:
            raise ValidationFailed(f"{field}.upTo", "tiers must be in ascending order of upTo")
        found.append(Tier(up_to, _amount(tier["unitPrice"], f"{field}.unitPrice")))
    return tuple(found)


def tiers_to_json(tiers: tuple[Tier, ...]) -> list[dict[str, str | None]] | None:
    if not tiers:
        return None
    return [{"upTo": None if t.up_to is None else money.format_decimal(t.up_to),
             "unitPrice": money.format_decimal(t.unit_price)} for t in tiers]


def tiers_from_json(value: list[dict[str, Any]] | None) -> tuple[Tier, ...]:
    if not value:
        return ()
    return tuple(Tier(None if t["upTo"] is None else Decimal(t["upTo"]), Decimal(t["unitPrice"])) for t in value)


def terms_to_json(terms: Terms) -> dict[str, Any]:
    """The terms as a binding quote keeps them."""
    text = money.format_decimal

    def opt(value: Decimal | None) -> str | None:
        return None if value is None else text(value)
    return {"pricingModel": terms.pricing_model, "unitPrice": opt(terms.unit_price),
            "packageSize": opt(terms.package_size), "packagePrice": opt(terms.package_price),
            "minimumQuantity": opt(terms.minimum_quantity), "tiers": tiers_to_json(terms.tiers)}


def terms_from_json(value: dict[str, Any]) -> Terms:
    def opt(name: str) -> Decimal | None:
        return None if value.get(name) is None else Decimal(value[name])
    return Terms(value["pricingModel"], opt("unitPrice"), opt("packageSize"), opt("packagePrice"),
                 opt("minimumQuantity"), tiers_from_json(value.get("tiers")))

"""Exact decimal arithmetic for amounts, prices and quantities.

Every amount in the service passes through here: parsed from text or an int (never a float),
multiplied and summed in a context that refuses to round, and written out as a normalized
plain decimal string ("0.037", "100").
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from decimal import ROUND_CEILING, ROUND_HALF_EVEN, Context, Decimal, Inexact, InvalidOperation, Overflow

# Wide enough for any product of a bounded quantity and a bounded price; Inexact is trapped,
# so a result that would need rounding raises instead of silently losing a digit.
_EXACT = Context(prec=80, traps=[Inexact, InvalidOperation, Overflow])

_PLAIN_DECIMAL = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")

MAX_QUANTITY = Decimal("1000000000000")  # 1e12 units of anything is not a real usage report
MAX_AMOUNT = Decimal("1000000000000")
MAX_SCALE = 12  # decimal places accepted on input


class InvalidAmount(ValueError):
    """A value that is not an exact, finite decimal within bounds."""


def to_decimal(value: object) -> Decimal:
    """Parse an int, Decimal or decimal string; refuse floats, booleans, NaN and infinities."""
    if isinstance(value, bool) or isinstance(value, float):
        raise InvalidAmount("must be a decimal number or a decimal string")
    if isinstance(value, int):
        result = Decimal(value)
    elif isinstance(value, Decimal):
        result = value
    elif isinstance(value, str):
        text = value.strip()
        if not _PLAIN_DECIMAL.match(text):
            raise InvalidAmount("must be a decimal number or a decimal string")
        try:
            result = Decimal(text)
        except InvalidOperation as exc:  # pragma: no cover - the pattern admits only valid text
            raise InvalidAmount("must be a decimal number") from exc
    else:
        raise InvalidAmount("must be a decimal number or a decimal string")
    if not result.is_finite():
        raise InvalidAmount("must be a finite number")
    return result


def bounded(value: Decimal, *, maximum: Decimal, allow_zero: bool, allow_negative: bool = False) -> Decimal:
    """Check sign, size and scale so that arithmetic on the value stays exact and meaningful.
    Checks use only exact comparisons until the value is known to fit the exact context."""
    if value == 0:
        if not allow_zero:
            raise InvalidAmount("must be greater than zero")
        return Decimal(0)
    if value < 0 and not allow_negative:
        raise InvalidAmount("must not be negative")
    if value.adjusted() > maximum.adjusted() or abs(value) > maximum:
        raise InvalidAmount(f"must not exceed {format_decimal(maximum)}")
    if value.adjusted() < -MAX_SCALE or len(value.as_tuple().digits) > _EXACT.prec // 2:
        raise InvalidAmount(f"must have at most {MAX_SCALE} decimal places")
    value = normalize(value)
    if -int(value.as_tuple().exponent) > MAX_SCALE:
        raise InvalidAmount(f"must have at most {MAX_SCALE} decimal places")
    return value


def normalize(value: Decimal) -> Decimal:
    """The canonical form of a value: no trailing zeros, no negative zero."""
    result = _EXACT.normalize(value)
    return result.copy_abs() if result.is_zero() else result


# Arithmetic through the exact context's methods (no context switch per operation); results keep
# whatever trailing zeros they have, which changes no value: format_decimal normalizes on output.
def multiply(quantity: Decimal, unit_price: Decimal) -> Decimal:
    return _EXACT.multiply(quantity, unit_price)


def add(a: Decimal, b: Decimal) -> Decimal:
    return _EXACT.add(a, b)


def subtract(a: Decimal, b: Decimal) -> Decimal:
    return _EXACT.subtract(a, b)


def total(values: Iterable[Decimal]) -> Decimal:
    result = Decimal(0)
    for value in values:
        result = _EXACT.add(result, value)
    return result


def format_decimal(value: Decimal) -> str:
    """Plain notation without exponent or trailing zeros: Decimal('1E+2') -> '100'."""
    return format(normalize(value), "f")


def round_up(value: Decimal, step: Decimal) -> Decimal:
    """The smallest multiple of `step` (a power of ten, e.g. 0.01) at or above `value`: what must be
    paid in whole cents to cover `value`. The one place an amount is rounded, always upwards."""
    return Context(prec=80, rounding=ROUND_CEILING, traps=[InvalidOperation, Overflow]).quantize(value, step)


def round_half_even(value: Decimal, places: int) -> Decimal:
    """`value` rounded half to even to `places` decimal places (a document's minor unit)."""
    return Context(prec=80, rounding=ROUND_HALF_EVEN, traps=[InvalidOperation, Overflow]).quantize(
        value, Decimal(1).scaleb(-places))


def split_gross(gross: Decimal, rate: Decimal, places: int) -> tuple[Decimal, Decimal]:
    """(net, tax) of an amount paid that includes tax at `rate` (a fraction): net is gross / (1 + rate)
    rounded half to even to the minor unit, tax is what is left, so net + tax = gross exactly."""
    exact_net = Context(prec=80, rounding=ROUND_HALF_EVEN).divide(gross, _EXACT.add(Decimal(1), rate))
    net = round_half_even(exact_net, places)
    return net, subtract(gross, net)

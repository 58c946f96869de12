"""Unit tests of the exact-decimal rules (no servers)."""
from __future__ import annotations

from decimal import Decimal

import pytest

from billing_core import money
from billing_core.usage.commands import ChargeRequest, fingerprint_body
from web.json import BillingJSONProvider


@pytest.mark.parametrize("value, text", [
    ("0.0370", "0.037"), ("1E+2", "100"), ("-0", "0"), ("0.000015", "0.000015"), ("1e-5", "0.00001"), (7, "7"),
])
def test_format_is_plain_and_normalized(value, text):
    assert money.format_decimal(money.to_decimal(value)) == text


@pytest.mark.parametrize("value", [1.5, True, False, None, "abc", "1,5", "NaN", "Infinity", "", [1]])
def test_to_decimal_refuses_floats_booleans_and_non_numbers(value):
    with pytest.raises(money.InvalidAmount):
        money.to_decimal(value)


def test_arithmetic_is_exact_beyond_default_precision():
    quantity = Decimal("999999999999.999999999999")
    price = Decimal("0.000000000001")
    assert money.multiply(quantity, price) == Decimal("0.999999999999999999999999")
    assert money.total([Decimal("0.1")] * 10) == Decimal(1)


def test_seed_quote_total_is_exact():
    lines = [("60", "0.0001"), ("500", "0.00003"), ("200", "0.000015"), ("1", "0.013")]
    assert money.format_decimal(money.total(money.multiply(Decimal(q), Decimal(p)) for q, p in lines)) == "0.037"


def test_json_numbers_arrive_as_decimal_never_float():
    body = BillingJSONProvider.loads(None, '{"a": 45.5, "b": 1e-5, "c": 3, "d": NaN}')  # type: ignore[arg-type]
    assert body["a"] == Decimal("45.5") and isinstance(body["a"], Decimal)
    assert body["b"] == Decimal("0.00001") and isinstance(body["c"], int)
    assert body["d"].is_nan()


def test_number_and_string_quantities_fingerprint_alike():
    item = {"category": "stt", "provider": "openai", "model": "whisper-1", "unit": "second"}
    as_number = ChargeRequest.model_validate({"featureKey": "f", "items": [{**item, "quantity": Decimal("45.50")}]})
    as_string = ChargeRequest.model_validate({"featureKey": "f", "items": [{**item, "quantity": "45.5"}]})
    assert fingerprint_body(as_number) == fingerprint_body(as_string)

"""The pricing models' arithmetic on its own (no stack): packages, minimums, graduated tiers,
multipliers and catalog validation."""
from __future__ import annotations

import math
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing_core import money
from billing_core.catalog.models import GRADUATED, PACKAGE, UNIT, Terms, Tier, packages_for, rate, terms_from_request
from billing_core.errors import ValidationFailed

D = Decimal
TIERS = (Tier(D(1000), D("0.01")), Tier(D(5000), D("0.005")), Tier(None, D("0.001")))
GRADUATED_TERMS = Terms(GRADUATED, tiers=TIERS)
quantities = st.decimals(min_value=0, max_value=20000, places=3, allow_nan=False, allow_infinity=False)


def test_package_per_started_minute_with_a_minimum():
    per_minute = Terms(PACKAGE, package_size=D(1), package_price=D("0.013"), minimum_quantity=D(1))
    assert rate(per_minute, D("0.25")).amount == D("0.013")  # 1 block
    assert rate(per_minute, D("2.5")).amount == D("0.039")  # 3 blocks
    assert rate(per_minute, D(0)).amount == D("0.013")  # the minimum is billed
    blocks = Terms(PACKAGE, package_size=D(15), package_price=D("0.004"))
    assert rate(blocks, D(31)).parts[0].quantity == 3 and rate(blocks, D(30)).amount == D("0.008")


def test_unit_with_a_minimum_bills_the_minimum():
    terms = Terms(UNIT, unit_price=D("0.0001"), minimum_quantity=D(60))
    rated = rate(terms, D(10))
    assert (rated.billed_quantity, rated.amount) == (D(60), D("0.006"))
    assert rate(terms, D(90)).amount == D("0.009")


def test_graduated_spans_tiers_within_one_item():
    rated = rate(GRADUATED_TERMS, D(1200), D(900))
    assert [(p.quantity, p.unit_price) for p in rated.parts] == [(D(100), D("0.01")), (D(1100), D("0.005"))]
    assert rated.amount == D("6.5")
    assert rate(GRADUATED_TERMS, D(10), D(6000)).amount == D("0.01")


@given(st.lists(quantities, min_size=1, max_size=20))
def test_graduated_in_pieces_is_the_price_of_the_total_at_once(pieces):
    position, charged = D(0), D(0)
    for quantity in pieces:
        rated = rate(GRADUATED_TERMS, quantity, position)
        assert sum((p.quantity for p in rated.parts), D(0)) == quantity
        charged += rated.amount
        position += rated.billed_quantity
    assert charged == rate(GRADUATED_TERMS, sum(pieces, D(0))).amount


@given(quantities, st.decimals(min_value=D("0.001"), max_value=1000, places=3),
       st.decimals(min_value=0, max_value=10, places=6))
def test_package_cost_is_ceil_quantity_over_size_times_price(quantity, size, price):
    terms = Terms(PACKAGE, package_size=size, package_price=price)
    expected = D(math.ceil(quantity / size)) if quantity else D(0)
    assert packages_for(quantity, size) == expected
    assert rate(terms, quantity).amount == expected * price


@settings(max_examples=50)
@given(st.decimals(min_value=0, max_value=3, places=4))
def test_a_multiplier_scales_every_price_exactly(multiplier):
    scaled = GRADUATED_TERMS.scaled(multiplier)
    assert [t.unit_price for t in scaled.tiers] == [money.multiply(t.unit_price, multiplier) for t in TIERS]
    assert [t.up_to for t in scaled.tiers] == [t.up_to for t in TIERS]


@pytest.mark.parametrize(("body", "field"), [
    ({"pricingModel": "unit"}, "unitPrice"),
    ({"pricingModel": "package", "packageSize": "0", "packagePrice": "1"}, "packageSize"),
    ({"pricingModel": "package", "packageSize": "15", "packagePrice": "1", "unitPrice": "1"}, "unitPrice"),
    ({"pricingModel": "package", "packagePrice": "1"}, "packageSize"),
    ({"pricingModel": "graduated", "tiers": [{"upTo": "10", "unitPrice": "1"}]}, "tiers[0].upTo"),
    ({"pricingModel": "graduated", "tiers": [{"upTo": None, "unitPrice": "1"}, {"upTo": None, "unitPrice": "1"}]},
     "tiers[0].upTo"),
    ({"pricingModel": "graduated", "tiers": [{"upTo": "10", "unitPrice": "1"}, {"upTo": "5", "unitPrice": "1"},
                                             {"upTo": None, "unitPrice": "1"}]}, "tiers[1].upTo"),
    ({"pricingModel": "graduated", "tiers": [{"upTo": None, "unitPrice": "-1"}]}, "tiers[0].unitPrice"),
    ({"pricingModel": "graduated", "tiers": [], }, "tiers"),
    ({"pricingModel": "unit", "unitPrice": "1", "minimumQuantity": "-1"}, "minimumQuantity"),
    ({"pricingModel": "flat", "unitPrice": "1"}, "pricingModel"),
])
def test_catalog_validation_names_the_field(body, field):
    arguments = {"unit_price": body.get("unitPrice"), "package_size": body.get("packageSize"),
                 "package_price": body.get("packagePrice"), "minimum_quantity": body.get("minimumQuantity"),
                 "tiers": body.get("tiers")}
    with pytest.raises(ValidationFailed) as refused:
        terms_from_request(body.get("pricingModel"), **arguments)
    assert refused.value.details["field"] == field

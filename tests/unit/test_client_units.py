"""The Python client's rules that need no server: backoff with full jitter, Retry-After, which answers
are retried, exact decimals on the wire, and models that tolerate fields the service adds later."""
from __future__ import annotations

import email.utils
import json
import time
from decimal import Decimal

import pytest
from lad_billing import Item, Wallet, errors
from lad_billing._operations import ChargeEvent, Operations
from lad_billing._retry import RetryPolicy, retry_after_seconds, retryable_status


def test_backoff_is_full_jitter_capped_and_retry_after_wins():
    policy = RetryPolicy(backoff_base=0.5, backoff_cap=8.0)
    for attempt in range(8):
        delays = [policy.delay(attempt, None) for _ in range(200)]
        assert all(0 <= d <= min(8.0, 0.5 * 2 ** attempt) for d in delays)
        assert max(delays) > min(8.0, 0.5 * 2 ** attempt) / 2  # spread over the whole range, not a fixed step
    assert policy.delay(5, 1.5) == 1.5


def test_retry_after_in_seconds_or_as_a_date():
    assert retry_after_seconds("3") == 3
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= retry_after_seconds(later) <= 31


def test_only_network_errors_408_429_and_5xx_are_retried():
    assert all(retryable_status(s) for s in (408, 429, 500, 502, 503, 504))
    assert not any(retryable_status(s) for s in (400, 401, 402, 403, 404, 409, 410, 413, 422))


def test_errors_are_named_after_the_codes():
    refused = errors.error_for(402, {"error": {"code": "budget_exceeded", "message": "over", "details": {"x": 1}}})
    assert isinstance(refused, errors.BudgetExceeded) and refused.details == {"x": 1} and refused.status == 402
    assert type(errors.error_for(502, None)) is errors.Unavailable
    unknown = errors.error_for(418, {"error": {"code": "teapot", "message": "no"}})
    assert type(unknown) is errors.BillingError and unknown.code == "teapot"


def test_amounts_go_out_as_exact_decimal_strings_and_floats_are_refused():
    op = Operations().charge(ChargeEvent("voice-agent", [Item("stt", "openai", "whisper-1", "second", Decimal("1E-5")),
                                                         {"category": "llm", "provider": "openai", "model": "gpt-4",
                                                          "unit": "token", "quantity": 350}],
                                         metadata={"rate": Decimal("0.10")}), wait=True)
    body = json.loads(op.content())
    assert [i["quantity"] for i in body["items"]] == ["0.00001", 350] and body["metadata"] == {"rate": "0.10"}
    assert body["idempotencyKey"] == op.idempotency_key and op.idempotency_key.startswith("lad-py-charge-")
    with pytest.raises(TypeError):
        Operations().charge(ChargeEvent("voice-agent", [Item("stt", "openai", "whisper-1", "second", 0.1)]), wait=True)
    with pytest.raises(TypeError):
        Operations().top_up(0.5, idempotency_key=None, description=None, kind=None, expires_at=None, priority=None)


def test_models_keep_fields_the_service_adds_later():
    data = {"id": "w", "tenantId": "t", "currentBalance": "1.10", "reservedBalance": "0", "availableBalance": "1.10",
            "overdraftLimit": "0", "currency": "USD", "status": "active", "flagged": False, "flagReason": None,
            "grants": [], "autoTopup": {"status": "active"}}
    wallet = Wallet.from_json(data)
    assert wallet.current_balance == Decimal("1.10") and wallet.raw["autoTopup"] == {"status": "active"}

"""Monthly invoices: one per tenant and calendar month (UTC) with money moving in its ledger.

What an invoice covers. The entries of a wallet form one balance chain in `seq` order. An entry's
`created_at` is its transaction's start, so across a month boundary a transaction that started
before midnight can commit after one that started after it: created_at is not monotonic in the chain.
An entry therefore belongs to the month of the latest created_at at or before it in its wallet's chain
(a running maximum). Each month is then one contiguous piece of the chain, and the invoice reconciles
exactly, from the chain alone:

    opening balance = balance_before of its first entry  (= balance_after of the last one before)
    closing balance = balance_after of its last entry
    opening + credits (top-ups, refunds, adjustments, expiries) - usage (the debits) = closing

Holds move no money (their amount is 0) and do not make an invoice. Usage lines come from the items of
the usage events whose debit is in the month, grouped by feature, category, provider, model, unit and
unit price; an event that occurred before the month but was charged in it (a late record's occurredAt,
or pending through an outage) is a separate prior-period line: a finalized month is never reopened.
An item priced by a model (graduated tiers, packages, a minimum, a tenant multiplier) bills the parts
it recorded when it was charged, so each tier is its own line (see _ITEM_PARTS). Each line's amount
is rounded once, half to even, to the currency's minor unit, and the difference is shown; the
ledger-exact totals reconcile, the rounded ones differ from them by exactly the rounding difference shown.

The rollup is set-based SQL over every tenant of a month at once (or one tenant), no loop over events:
the month's ledger is aggregated once for the chain (its credits through a small index), the usage
events charged in the month are joined once with their items and aggregated into lines, into temporary
tables of the transaction; from them the invoices and their lines are inserted in one statement. A
draft (preview) is the same SQL without the insert. Idempotent per (tenant, period): a transaction-level
advisory lock per period serialises concurrent runs, existing invoices are skipped (ON CONFLICT DO
NOTHING on the unique (tenant_id, period)), and lines are written only for invoices this run created,
in the same statement. Invoices are finalized when written and never change (triggers refuse UPDATE,
DELETE, TRUNCATE and late lines); a debit whose entry lands after its month was invoiced belongs to a
later month by the rule above, so nothing is ever rewritten.

Before writing, each draft is checked (`problem`): the chain adds up (opening + the sum of the month's
amounts = closing), the usage lines add up to the debits, no entry of an unknown type moved money, and
the month starts where the invoice of the month before ended. A tenant that fails gets no invoice and
is reported (RollupResult.refused, invoice_runs.refused, an ERROR log line): nothing is fixed silently,
and one broken ledger does not hold back every other tenant's invoice. The table also CHECKs that each
stored invoice reconciles.

A month is rolled up only once it is closed: its end has passed and no transaction that began before
its end is still open in the database (one of those could still write an entry dated in the month).
The session timeouts of billing_core.db end such transactions within minutes; the monthly job runs at
00:15 UTC on the 1st and retries while the month is still settling. The rollup reads entries dated from
a day before the month (SETTLE_MARGIN): a transaction writing ledger entries is assumed not to stay
open for a day.
"""
from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass, field, fields, replace
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from sqlalchemy import text

from billing_core import logs, money
from billing_core.agencies.tree import agency_of
from billing_core.cursors import decode_cursor, encode_cursor
from billing_core.db import UnitOfWork
from billing_core.documents import numbering, parties
from billing_core.errors import BillingError, NotFound, ValidationFailed
from billing_core.ledger import expiry

# digits after the point of each currency's minor unit (ISO 4217); others have two
MINOR_UNITS = {"USD": 2, "EUR": 2, "GBP": 2, "CHF": 2, "CAD": 2, "AUD": 2, "JPY": 0, "KRW": 0, "CLP": 0,
               "BHD": 3, "KWD": 3, "JOD": 3, "OMR": 3, "TND": 3}
DEFAULT_MINOR_UNIT = 2
# entries dated up to this long before a month can still belong to it (see the module docstring)
SETTLE_MARGIN = timedelta(days=1)
ADVISORY_NAMESPACE = 0x1A0_1AD  # pg_advisory_xact_lock(namespace, period) keys; no other user of it
LIST_LIMIT_MAX = 200
FINALIZED, DRAFT = "finalized", "draft"

log = logs.get(__name__)
_PERIOD = re.compile(r"^(\d{4})-(\d{2})$")


class PeriodNotClosed(BillingError):
    """Invoices are written only for a month that is over and settled (HTTP 409)."""
    code = "period_not_closed"


class PeriodNotStarted(BillingError):
    """A month in the future has no draft (HTTP 409)."""
    code = "period_not_started"


@dataclass(frozen=True, order=True)
class Period:
    """A calendar month in UTC."""
    year: int
    month: int

    @classmethod
    def parse(cls, value: str | None, field_name: str = "period") -> Period:
        match = _PERIOD.match(value or "")
        if not match or not (1 <= int(match.group(2)) <= 12) or not (1970 <= int(match.group(1)) <= 9998):
            raise ValidationFailed(field_name, "must be a month as YYYY-MM (1970-01 to 9998-12)")
        return cls(int(match.group(1)), int(match.group(2)))

    @classmethod
    def containing(cls, moment: datetime) -> Period:
        moment = moment.astimezone(timezone.utc)
        return cls(moment.year, moment.month)

    @classmethod
    def of(cls, first_day: date) -> Period:
        return cls(first_day.year, first_day.month)

    @property
    def label(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"

    @property
    def first_day(self) -> date:
        return date(self.year, self.month, 1)

    @property
    def start(self) -> datetime:
        return datetime(self.year, self.month, 1, tzinfo=timezone.utc)

    @property
    def end(self) -> datetime:
        return self.next().start

    def next(self) -> Period:
        return Period(self.year + self.month // 12, self.month % 12 + 1)

    def previous(self) -> Period:
        return Period(self.year - (self.month == 1), (self.month - 2) % 12 + 1)

    def index(self) -> int:
        return self.year * 12 + self.month - 1


def previous_period(now: datetime) -> Period:
    """The month the monthly job invoices when it runs at `now`: the one before."""
    return Period.containing(now).previous()


def minor_unit(currency: str) -> int:
    return MINOR_UNITS.get(currency, DEFAULT_MINOR_UNIT)


@dataclass(frozen=True)
class InvoiceLine:
    line_no: int
    line_type: str  # usage | topup | refund | adjustment | expiry
    feature_key: str | None
    category: str | None
    provider: str | None
    model: str | None
    unit: str | None
    unit_price: Decimal | None
    prior_period: bool
    credit_kind: str | None
    description: str | None
    item_count: int
    quantity: Decimal | None
    exact_amount: Decimal
    amount: Decimal
    rounding_difference: Decimal


@dataclass(frozen=True)
class Invoice:
    id: uuid.UUID | None  # None for a draft
    tenant_id: str
    wallet_id: uuid.UUID | None
    period: date
    period_start: datetime
    period_end: datetime
    status: str
    currency: str
    minor_unit: int
    first_seq: int | None
    last_seq: int | None
    entry_count: int
    opening_balance: Decimal
    closing_balance: Decimal
    usage_exact: Decimal
    total_usage: Decimal
    rounding_difference: Decimal
    topups: Decimal
    refunds: Decimal
    adjustments: Decimal
    expiries: Decimal
    total_credits: Decimal
    usage_line_count: int
    credit_line_count: int
    created_at: datetime | None
    finalized_at: datetime | None
    lines: tuple[InvoiceLine, ...] = field(default=())
    problem: str | None = None  # a draft that does not reconcile says why (see PROBLEMS)
    # given when the invoice is issued (None on drafts, and on invoices from before numbering)
    number: str | None = None
    issued_at: datetime | None = None
    issuer_id: str | None = None
    issuer: dict[str, Any] | None = None
    customer: dict[str, Any] | None = None

    @property
    def period_label(self) -> str:
        return Period.of(self.period).label

    @property
    def reconciles(self) -> bool:
        return self.problem is None and \
            self.opening_balance + self.total_credits - self.usage_exact == self.closing_balance

    @property
    def usage_lines(self) -> list[InvoiceLine]:
        return [line for line in self.lines if line.line_type == "usage"]

    @property
    def credit_lines(self) -> list[InvoiceLine]:
        return [line for line in self.lines if line.line_type != "usage"]


_HEADER_COLUMNS = [f.name for f in fields(Invoice) if f.name not in ("lines", "problem")]
_LINE_COLUMNS = [f.name for f in fields(InvoiceLine)]
# the columns the draft computes (the rest are given when an invoice is written)
_ISSUE_COLUMNS = ("number", "issued_at", "issuer_id", "issuer", "customer")
_DRAFT_COLUMNS = [c for c in _HEADER_COLUMNS
                  if c not in ("id", "status", "created_at", "finalized_at", *_ISSUE_COLUMNS)]


@dataclass(frozen=True)
class RollupResult:
    period: Period
    tenant_id: str | None
    # (invoice id, tenant id) of each invoice this run finalized: hook `invoice.finalized` here
    created: list[tuple[uuid.UUID, str]]
    lines_created: int
    milliseconds: int
    # tenants whose ledger does not reconcile for the month: no invoice, for a person to look at
    refused: list[dict[str, Any]] = field(default_factory=list)

    @property
    def invoice_ids(self) -> list[uuid.UUID]:
        return [invoice_id for invoice_id, _ in self.created]


# --- the SQL ------------------------------------------------------------------------------------------
# One text for the rollup and the preview; {tenant} is empty (every tenant) or a predicate on :tenant_id.

def _minor_unit_sql(column: str) -> str:
    cases = " ".join(f"WHEN '{code}' THEN {places}" for code, places in sorted(MINOR_UNITS.items()))
    return f"CASE {column} {cases} ELSE {DEFAULT_MINOR_UNIT} END"


# Where each wallet's month starts and ends in its chain: the first entry dated at or after the month's
# start (end), found in the day after it. Entries dated in the margin before a boundary but after that
# entry in the chain belong after the boundary. (The two windows never overlap: a month is longer.)
# A CTE in each statement, not a temporary table: a temporary table would keep the big scans serial.
_BOUNDS = """bounds AS (
    SELECT wallet_id,
           min(seq) FILTER (WHERE created_at < :start_margin) AS start_seq,
           min(seq) FILTER (WHERE created_at >= :end) AS end_seq
    FROM ledger_entries
    WHERE ((created_at >= :start AND created_at < :start_margin)
           OR (created_at >= :end AND created_at < :end_margin)) AND tenant_id = :tenant_id
    GROUP BY wallet_id
)"""
_MONTH_OF_CHAIN = """
FROM ledger_entries l
LEFT JOIN bounds b ON b.wallet_id = l.wallet_id
WHERE l.created_at >= :margin_start AND l.created_at < :end AND l.tenant_id = :tenant_id
  AND (l.created_at >= :start OR l.seq > b.start_seq)
  AND (b.end_seq IS NULL OR l.seq < b.end_seq)"""

# 1. the month's piece of each wallet's chain, by entry type (the money entries; holds move none)
_DRAFT_CHAIN = """
CREATE TEMP TABLE invoice_draft_chain ON COMMIT DROP AS
WITH {bounds}
SELECT l.wallet_id, l.entry_type, min(l.seq) AS first_seq, max(l.seq) AS last_seq, count(*) AS entries,
       sum(l.amount) AS amount
{month}
  AND l.entry_type NOT IN ('hold', 'hold_release')
GROUP BY l.wallet_id, l.entry_type
"""

# 2. the credits (few rows): which grant each moved, which event a refund gave back
_DRAFT_CREDITS = """
CREATE TEMP TABLE invoice_draft_credits ON COMMIT DROP AS
WITH {bounds}
SELECT l.tenant_id, l.wallet_id, l.entry_type, l.grant_id,
       CASE WHEN l.entry_type IN ('refund', 'correction') THEN l.usage_event_id END AS usage_event_id,
       sign(l.amount) AS direction, count(*) AS entries, sum(l.amount) AS amount
{month}
  AND l.entry_type IN ('topup', 'refund', 'adjustment', 'expiry', 'correction') AND l.amount <> 0
GROUP BY 1, 2, 3, 4, 5, 6
"""

# 2c. the corrections and re-rates of an agency-funded sub-account's usage: its wallet moved nothing (a zero
# `correction` entry dates each in its chain, as a zero debit dates each charge), its agency billed it the
# resale change. Each is a correction line at resale (a void's or amend's usage_corrections row: cost before
# less cost after; a re-rate's rerate_events row of the event in the run the entry names: its difference;
# positive, corrected down), prior-period when the event was charged before the month, as a prepaid
# sub-account's; and the same amount the other way on the "usage billed by the agency" line (what the
# agency bills it less), so the invoice reconciles with its (unmoved) ledger. Read from the sub-account's
# own rows alone.
_DRAFT_AGENCY_CORRECTED = """
INSERT INTO invoice_draft_credits
WITH {bounds}, zero AS (
    SELECT l.tenant_id, l.wallet_id, l.id, l.usage_event_id, l.reference
{month}
      AND l.entry_type = 'correction' AND l.amount = 0
), changed AS (
    SELECT z.tenant_id, z.wallet_id, z.usage_event_id, u.cost_before - u.cost_after AS amount
    FROM zero z
    JOIN usage_corrections u ON u.tenant_id = :tenant_id AND u.tenant_id = z.tenant_id AND u.ledger_entry_id = z.id
    UNION ALL
    SELECT z.tenant_id, z.wallet_id, z.usage_event_id, r.difference
    FROM zero z
    JOIN rerate_events r ON r.tenant_id = :tenant_id AND r.tenant_id = z.tenant_id
        AND r.usage_event_id = z.usage_event_id AND z.reference = 'rerate:' || CAST(r.run_id AS text)
)
SELECT c.tenant_id, c.wallet_id, k.entry_type, CAST(NULL AS uuid), k.usage_event_id,
       CASE k.entry_type WHEN 'agency_corrected' THEN 1 ELSE sign(k.amount) END, count(*), sum(k.amount)
FROM changed c
CROSS JOIN LATERAL (VALUES ('correction', c.usage_event_id, c.amount),
                           ('agency_corrected', CAST(NULL AS uuid), -c.amount))
    AS k (entry_type, usage_event_id, amount)
WHERE c.amount <> 0
GROUP BY 1, 2, 3, 4, 5, 6
"""

# 2b. what an agency billed for its agency-funded sub-account (white label): the sub-account's ledger
# has a zero debit for each such event, its usage lines the resale price; the difference between the
# resale amount recorded with the agency's debit (agency_charges) and the sub-account's own debit is
# billed to the sub-account by its agency, outside LAD: one credit line of the sub-account's invoice
# ("adjustment"), so it reconciles (opening + credits - usage = closing) and its usage is what the
# agency recorded. Nothing for prepaid sub-accounts (their debit is the resale amount).
_DRAFT_AGENCY_BILLED = """
INSERT INTO invoice_draft_credits
SELECT e.tenant_id, l.wallet_id, 'agency_billed', CAST(NULL AS uuid), CAST(NULL AS uuid), 1, count(*),
       sum(r.resale_amount + l.amount)
FROM unnest(CAST(:billed_events AS uuid[]), CAST(:billed_resale AS numeric[])) AS r (usage_event_id, resale_amount)
JOIN usage_events e ON e.tenant_id = :tenant_id AND e.id = r.usage_event_id
JOIN ledger_entries l ON l.tenant_id = :tenant_id AND l.usage_event_id = e.id AND l.entry_type = 'debit'
WHERE e.status = 'charged' AND e.charged_at >= :start AND e.charged_at < :end
GROUP BY 1, 2
HAVING sum(r.resale_amount + l.amount) <> 0
"""
# the resale amounts the agency recorded for the sub-account's events charged in the month: the agency's
# rows (another tenant, another shard under Citus), read on their own and handed to the statement above
_AGENCY_RESALE = """
SELECT a.usage_event_id, a.resale_amount FROM agency_charges a
WHERE a.tenant_id = :agency_id AND a.sub_account_id = :tenant_id AND a.charged_at >= :start AND a.charged_at < :end
"""

# 3. the usage: the items of the events whose debit is in the month. A charged event's charged_at is
# its debit's created_at (one transaction, one now()), so the usage is that of the events charged in
# the month (one join, events with their items), corrected at the boundaries by the chain (3b). Should
# the two times ever differ, the usage would not match the chain's debits and the rollup refuses to
# write that tenant's invoice (_refused): it can fail loudly, never invoice wrongly. Items are joined on
# the event id alone and counted for the tenant named on the item (an event's tenant would make every
# hashed event row wider); an item attached to another tenant's event would leave both tenants' usage
# different from their debits, so both would be refused. Prior-period amounts are
# aggregates beside the month's rather than a grouping key (an expression there would make the
# planner expect a group per row, and sort instead of hashing in parallel).
_USAGE_COLUMNS = """i.tenant_id, e.feature_key, i.category, i.provider, i.model, i.unit, i.unit_price,
       {count} FILTER (WHERE e.occurred_at >= :start) AS items,
       sum({signed}i.quantity) FILTER (WHERE e.occurred_at >= :start) AS quantity,
       sum({signed}i.cost) FILTER (WHERE e.occurred_at >= :start) AS exact_amount,
       {count} FILTER (WHERE e.occurred_at < :start) AS prior_items,
       sum({signed}i.quantity) FILTER (WHERE e.occurred_at < :start) AS prior_quantity,
       sum({signed}i.cost) FILTER (WHERE e.occurred_at < :start) AS prior_exact_amount"""
_DRAFT_USAGE = """
CREATE TEMP TABLE invoice_draft_usage ON COMMIT DROP AS
SELECT {columns}
FROM usage_events e
JOIN {item_parts} i ON i.tenant_id = e.tenant_id AND i.usage_event_id = e.id
WHERE e.status = 'charged' AND e.charged_at >= :start AND e.charged_at < :end AND e.tenant_id = :tenant_id
GROUP BY 1, 2, 3, 4, 5, 6, 7
"""
# The items as invoices bill them: an item priced as quantity x unit price is one part; an item priced
# by a model (tiers, packages, a minimum, a multiplier) bills the parts it recorded when it was charged
# (usage_event_items.pricing), each at its own unit price, so tier lines are separate lines and every
# line is quantity x unit price. A package part's quantity is packages, its unit "<size> <unit>".
# The few priced items are read through their partial index.
_ITEM_PARTS = """(
    SELECT i.tenant_id, i.usage_event_id, i.category, i.provider, i.model, i.unit, i.unit_price, i.quantity, i.cost
    FROM usage_event_items i WHERE i.tenant_id = :tenant_id AND i.pricing IS NULL
    UNION ALL
    SELECT i.tenant_id, i.usage_event_id, i.category, i.provider, i.model,
           CASE WHEN p.part ? 'packageSize' THEN (p.part ->> 'packageSize') || ' ' || i.unit ELSE i.unit END,
           CAST(p.part ->> 'unitPrice' AS numeric), CAST(p.part ->> 'quantity' AS numeric),
           CAST(p.part ->> 'amount' AS numeric)
    FROM usage_event_items i CROSS JOIN LATERAL jsonb_array_elements(i.pricing -> 'parts') AS p (part)
    WHERE i.tenant_id = :tenant_id AND i.pricing IS NOT NULL
)"""

# 3b. the debits whose place in the chain moves them across a boundary: dated in the margin before the
# month but after its first entry (+1: the month's), or dated in the month but after the next month's
# first entry (-1: the next month's). Usually none.
_DRAFT_USAGE_MOVED = """
INSERT INTO invoice_draft_usage
WITH {bounds}, moved AS (
    SELECT l.usage_event_id, CASE WHEN l.created_at < :start THEN 1 ELSE -1 END AS sign
    FROM ledger_entries l
    JOIN bounds b ON b.wallet_id = l.wallet_id
    WHERE l.entry_type = 'debit' AND l.tenant_id = :tenant_id
      AND ((l.created_at >= :margin_start AND l.created_at < :start AND l.seq > b.start_seq)
           OR (l.created_at >= :end_less_margin AND l.created_at < :end AND l.seq > b.end_seq))
)
SELECT {columns}
FROM moved m
JOIN usage_events e ON e.tenant_id = :tenant_id AND e.id = m.usage_event_id
JOIN {item_parts} i ON i.tenant_id = e.tenant_id AND i.usage_event_id = e.id
GROUP BY 1, 2, 3, 4, 5, 6, 7
"""

# 3c. an agency's debits for its sub-accounts' events (agency_charges, in the same transaction as the
# sub-account's event was charged): at the agency's price, one line per sub-account, feature and price,
# "category" sub_account and "provider" the sub-account's id, each event one unit at the price LAD charged.
# Read from agency_charges alone, which keeps the event's charge and occurrence times (migration 0050): the
# sub-account's events are another tenant's rows, on another shard under Citus.
_DRAFT_AGENCY_USAGE = """
INSERT INTO invoice_draft_usage
SELECT {columns}
FROM (SELECT a.tenant_id, a.feature_key, a.occurred_at, 'sub_account' AS category,
             a.sub_account_id AS provider, 'usage' AS model, 'event' AS unit, a.agency_amount AS unit_price,
             1 AS quantity, a.agency_amount AS cost
      FROM agency_charges a
      WHERE a.tenant_id = :tenant_id AND a.charged_at >= :start AND a.charged_at < :end) AS e
CROSS JOIN LATERAL (SELECT e.tenant_id, e.category, e.provider, e.model, e.unit, e.unit_price, e.quantity,
                           e.cost) AS i
GROUP BY 1, 2, 3, 4, 5, 6, 7
"""

# 4. the lines, numbered per invoice: usage first (the month's, then prior-period), then credits by type
_DRAFT_LINES = """
CREATE TEMP TABLE invoice_draft_lines ON COMMIT DROP AS
WITH wallet AS (
    SELECT w.id AS wallet_id, w.tenant_id, {minor_unit} AS minor_unit
    FROM wallets w WHERE w.tenant_id = :tenant_id AND w.id IN (SELECT DISTINCT wallet_id FROM invoice_draft_chain)
), usage AS (
    SELECT w.wallet_id, u.feature_key, u.category, u.provider, u.model, u.unit, u.unit_price, p.prior_period,
           CAST(p.items AS bigint) AS items, p.quantity, p.exact_amount
    FROM (SELECT tenant_id, feature_key, category, provider, model, unit, unit_price,
                 sum(items) AS items, sum(quantity) AS quantity, sum(exact_amount) AS exact_amount,
                 sum(prior_items) AS prior_items, sum(prior_quantity) AS prior_quantity,
                 sum(prior_exact_amount) AS prior_exact_amount
          FROM invoice_draft_usage GROUP BY 1, 2, 3, 4, 5, 6, 7) u
    JOIN wallet w ON w.tenant_id = u.tenant_id
    CROSS JOIN LATERAL (VALUES (false, u.items, u.quantity, u.exact_amount),
                               (true, u.prior_items, u.prior_quantity, u.prior_exact_amount))
        AS p (prior_period, items, quantity, exact_amount)
    WHERE p.items > 0
), credit AS (
    SELECT c.wallet_id, CASE c.entry_type WHEN 'agency_corrected' THEN 'agency_billed' ELSE c.entry_type END
               AS line_type,
           CASE WHEN c.entry_type IN ('refund', 'correction') THEN e.feature_key END AS feature_key,
           CASE WHEN c.entry_type NOT IN ('refund', 'correction') THEN g.kind END AS credit_kind,
           c.direction,
           -- a correction of usage charged before the period (its month invoiced or not) is prior-period
           coalesce(c.entry_type = 'correction' AND e.charged_at < CAST(:start AS timestamptz), false) AS prior_period,
           CAST(sum(c.entries) AS bigint) AS items, sum(c.amount) AS exact_amount
    FROM invoice_draft_credits c
    LEFT JOIN credit_grants g ON g.tenant_id = :tenant_id AND g.id = c.grant_id
        AND c.entry_type NOT IN ('refund', 'correction')
    LEFT JOIN usage_events e ON e.tenant_id = :tenant_id AND e.id = c.usage_event_id
    GROUP BY 1, 2, 3, 4, 5, 6
), united AS (
    SELECT u.wallet_id, 'usage' AS line_type, u.feature_key, u.category, u.provider, u.model, u.unit,
           u.unit_price, u.prior_period, NULL AS credit_kind,
           CASE WHEN u.prior_period THEN 'occurred before the period, charged in it' END AS description,
           u.items, u.quantity, u.exact_amount, round_half_even(u.exact_amount, w.minor_unit) AS amount,
           0 AS type_order, 0 AS direction
    FROM usage u JOIN wallet w ON w.wallet_id = u.wallet_id
    UNION ALL
    SELECT c.wallet_id, CASE c.line_type WHEN 'agency_billed' THEN 'adjustment' ELSE c.line_type END,
           c.feature_key, NULL, NULL, NULL, NULL, NULL, c.prior_period, c.credit_kind,
           CASE c.line_type
               WHEN 'agency_billed' THEN 'usage billed by the agency'
               WHEN 'topup' THEN coalesce(c.credit_kind, 'paid') || ' top-ups'
               WHEN 'refund' THEN 'refunds' || coalesce(' of ' || c.feature_key, '')
               WHEN 'adjustment' THEN CASE WHEN c.direction > 0 THEN 'credit adjustments' ELSE 'debit adjustments' END
               WHEN 'correction' THEN CASE WHEN c.direction > 0 THEN 'usage corrected down' ELSE 'usage corrected up' END
                   || coalesce(' (' || c.feature_key || ')', '')
                   || CASE WHEN c.prior_period THEN ', prior period' ELSE '' END
               ELSE coalesce(c.credit_kind, 'paid') || ' credits expired' END,
           c.items, NULL, c.exact_amount, c.exact_amount,
           array_position(ARRAY['topup', 'refund', 'adjustment', 'expiry', 'correction'],
                          CASE c.line_type WHEN 'agency_billed' THEN 'adjustment' ELSE c.line_type END), c.direction
    FROM credit c
)
SELECT w.tenant_id, u.wallet_id,
       CAST(row_number() OVER (PARTITION BY u.wallet_id ORDER BY u.type_order, u.prior_period,
                               u.feature_key NULLS FIRST, u.category, u.provider, u.model, u.unit, u.unit_price,
                               u.credit_kind, u.direction DESC) AS integer) AS line_no,
       u.line_type, u.feature_key, u.category, u.provider, u.model, u.unit, u.unit_price, u.prior_period,
       u.credit_kind, u.description, u.items AS item_count, u.quantity, u.exact_amount, u.amount,
       u.amount - u.exact_amount AS rounding_difference
FROM united u JOIN wallet w ON w.wallet_id = u.wallet_id
"""

# 5. one header per tenant: the ends of its piece of chain, the totals of its lines
_DRAFT_HEADERS = """
CREATE TEMP TABLE invoice_draft_headers ON COMMIT DROP AS
WITH chain AS (
    SELECT wallet_id, min(first_seq) AS first_seq, max(last_seq) AS last_seq,
           CAST(sum(entries) AS bigint) AS entry_count,
           coalesce(sum(amount) FILTER (WHERE entry_type = 'topup'), 0) AS topups,
           coalesce(sum(amount) FILTER (WHERE entry_type = 'refund'), 0) AS refunds,
           coalesce(sum(amount) FILTER (WHERE entry_type IN ('adjustment', 'correction')), 0) AS adjustments,
           coalesce(sum(amount) FILTER (WHERE entry_type = 'expiry'), 0) AS expiries,
           coalesce(sum(amount) FILTER (WHERE entry_type = 'debit'), 0) AS debits,
           coalesce(sum(amount) FILTER (WHERE entry_type NOT IN ('topup', 'refund', 'adjustment', 'expiry', 'debit',
                                                                 'correction')),
                    0) AS unknown
    FROM invoice_draft_chain GROUP BY wallet_id
), billed AS (
    SELECT wallet_id, sum(amount) AS amount FROM invoice_draft_credits WHERE entry_type = 'agency_billed'
    GROUP BY wallet_id
), totals AS (
    SELECT wallet_id,
           coalesce(sum(exact_amount) FILTER (WHERE line_type = 'usage'), 0) AS usage_exact,
           coalesce(sum(amount) FILTER (WHERE line_type = 'usage'), 0) AS total_usage,
           coalesce(sum(exact_amount) FILTER (WHERE line_type <> 'usage'), 0) AS total_credits,
           CAST(count(*) FILTER (WHERE line_type = 'usage') AS integer) AS usage_line_count,
           CAST(count(*) FILTER (WHERE line_type <> 'usage') AS integer) AS credit_line_count
    FROM invoice_draft_lines GROUP BY wallet_id
)
SELECT h.*, CASE
    WHEN h.unknown <> 0 THEN 'unknown_entries'
    WHEN h.usage_exact <> -h.debits + h.agency_billed THEN 'usage_differs_from_debits'
    WHEN h.opening_balance + h.total_credits - h.usage_exact <> h.closing_balance THEN 'broken_chain'
    WHEN h.previous_closing IS NOT NULL AND h.previous_closing <> h.opening_balance THEN 'gap_after_previous_invoice'
END AS problem
FROM (
SELECT w.tenant_id, c.wallet_id, CAST(:period AS date) AS period, CAST(:start AS timestamptz) AS period_start,
       CAST(:end AS timestamptz) AS period_end, w.currency, {minor_unit} AS minor_unit,
       c.first_seq, c.last_seq, c.entry_count,
       f.balance_before AS opening_balance, z.balance_after AS closing_balance,
       coalesce(t.usage_exact, 0) AS usage_exact, coalesce(t.total_usage, 0) AS total_usage,
       coalesce(t.total_usage, 0) - coalesce(t.usage_exact, 0) AS rounding_difference,
       c.topups, c.refunds, c.adjustments + coalesce(b.amount, 0) AS adjustments, c.expiries,
       coalesce(t.total_credits, 0) AS total_credits, coalesce(b.amount, 0) AS agency_billed,
       coalesce(t.usage_line_count, 0) AS usage_line_count, coalesce(t.credit_line_count, 0) AS credit_line_count,
       -- checked before anything is written (`problem`): the chain adds up, the debits are what the
       -- usage lines price, no entry is of a kind the invoice does not know, and the month starts
       -- where the invoice of the month before ended
       c.debits, c.unknown, p.closing_balance AS previous_closing
FROM chain c
JOIN wallets w ON w.tenant_id = :tenant_id AND w.id = c.wallet_id
JOIN ledger_entries f ON f.tenant_id = :tenant_id AND f.seq = c.first_seq
JOIN ledger_entries z ON z.tenant_id = :tenant_id AND z.seq = c.last_seq
LEFT JOIN totals t ON t.wallet_id = c.wallet_id
LEFT JOIN billed b ON b.wallet_id = c.wallet_id
LEFT JOIN invoices p ON p.tenant_id = :tenant_id AND p.period = CAST(:previous AS date)
) AS h
"""

# The tenant's invoice takes the next number of its issuer's series (locked by numbering.take before): the
# rollup goes through the tenants in order, so each series numbers its invoices in tenant order. The advisory
# lock of the period serialises runs, so an invoice already there is skipped by NOT EXISTS, and a conflict
# would be an error (rolling back the numbers with it) rather than a silent gap.
_WRITE = """
WITH created AS (
    INSERT INTO invoices (id, status, created_at, finalized_at, number, issued_at, issuer_id, issuer, customer,
                          {columns})
    SELECT gen_random_uuid(), 'finalized', now(), now(),
           :prefix || lpad(h.number_value::text, greatest(:digits, length(h.number_value::text)), '0'),
           now(), :issuer_id, CAST(:issuer AS jsonb),
           (SELECT jsonb_build_object('legalName', d.legal_name, 'address', d.address, 'taxId', d.tax_id)
            FROM billing_details d WHERE d.tenant_id = :tenant_id),
           {columns_h}
    FROM (SELECT d.*, :first_number + row_number() OVER (ORDER BY d.tenant_id) - 1 AS number_value
          FROM invoice_draft_headers d
          WHERE d.problem IS NULL
            AND NOT EXISTS (SELECT 1 FROM invoices i WHERE i.tenant_id = :tenant_id AND i.period = d.period)
         ) h
    ORDER BY h.tenant_id
    RETURNING id, tenant_id, number
), written AS (
    INSERT INTO invoice_lines (invoice_id, {line_columns})
    SELECT c.id, {line_columns_l}
    FROM created c JOIN invoice_draft_lines l ON l.tenant_id = c.tenant_id
    ORDER BY c.id, l.line_no
    RETURNING 1
)
SELECT c.id, c.tenant_id, c.number, (SELECT count(*) FROM written) AS lines FROM created c
"""

_LINE_INSERT_COLUMNS = [c for c in _LINE_COLUMNS]


_DRAFT_TABLES = ("invoice_draft_chain", "invoice_draft_credits", "invoice_draft_usage", "invoice_draft_lines",
                 "invoice_draft_headers")


def _prepare(uow: UnitOfWork, period: Period, tenant_id: str) -> None:
    """Compute the tenant's draft of `period` into temporary tables of this transaction (those of the tenant
    before, if any, dropped first). Every statement reads one tenant's rows (`tenant_id = :tenant_id` on each
    tenant table): under Citus each runs on the tenant's shard, joined there with the temporary tables
    of the coordinator's session."""
    uow.connection.execute(text(f"DROP TABLE IF EXISTS {', '.join(_DRAFT_TABLES)}"))
    bounds = _BOUNDS
    month = _MONTH_OF_CHAIN
    minor = _minor_unit_sql("w.currency")
    params: dict[str, Any] = {
        "start": period.start, "end": period.end, "margin_start": period.start - SETTLE_MARGIN,
        "start_margin": period.start + SETTLE_MARGIN, "end_margin": period.end + SETTLE_MARGIN,
        "end_less_margin": period.end - SETTLE_MARGIN, "period": period.first_day,
        "previous": period.previous().first_day, "tenant_id": tenant_id,
        "agency_id": agency_of(uow, tenant_id),
    }
    resale = uow.connection.execute(text(_AGENCY_RESALE), params).all() if params["agency_id"] else []
    params["billed_events"] = [r.usage_event_id for r in resale]
    params["billed_resale"] = [r.resale_amount for r in resale]
    usage_columns = _USAGE_COLUMNS.format(count="count(*)", signed="")
    moved_columns = _USAGE_COLUMNS.format(count="sum(m.sign)", signed="m.sign * ")
    for table, statement in (("invoice_draft_chain", _DRAFT_CHAIN.format(bounds=bounds, month=month)),
                             ("invoice_draft_credits", _DRAFT_CREDITS.format(bounds=bounds, month=month)),
                             ("invoice_draft_credits", _DRAFT_AGENCY_BILLED),
                             ("invoice_draft_credits", _DRAFT_AGENCY_CORRECTED.format(bounds=bounds, month=month)),
                             ("invoice_draft_usage", _DRAFT_USAGE.format(columns=usage_columns,
                                                                         item_parts=_ITEM_PARTS)),
                             ("invoice_draft_usage", _DRAFT_USAGE_MOVED.format(bounds=bounds, columns=moved_columns,
                                                                               item_parts=_ITEM_PARTS)),
                             ("invoice_draft_usage", _DRAFT_AGENCY_USAGE.format(columns=usage_columns)),
                             ("invoice_draft_lines", _DRAFT_LINES.format(minor_unit=minor)),
                             ("invoice_draft_headers", _DRAFT_HEADERS.format(minor_unit=minor))):
        uow.connection.execute(text(statement), params)
        uow.connection.execute(text(f"ANALYZE {table}"))  # temporary tables get no statistics otherwise


def _tune(uow: UnitOfWork, *, rollup: bool) -> None:
    if rollup:
        # a month of every tenant is one big read: not the sessions' 60 s statement limit; and waiting
        # for a concurrent run of the same month (the advisory lock) is not a stuck lock
        uow.connection.execute(text("SET LOCAL statement_timeout = '30min'"))
        uow.connection.execute(text("SET LOCAL lock_timeout = '30min'"))
    # memory for the hash joins and aggregates of a month (per plan node and worker, this transaction only)
    uow.connection.execute(text("SET LOCAL work_mem = '256MB'"))
    # compiling these plans takes seconds at 10M rows and saves less than that
    uow.connection.execute(text("SET LOCAL jit = off"))


PROBLEMS = {
    "broken_chain": "opening + credits - debits is not the closing balance: the balance chain is broken",
    "usage_differs_from_debits": "the usage lines do not add up to the debits of the ledger",
    "unknown_entries": "ledger entries of a type the invoice does not know moved money",
    "gap_after_previous_invoice": "the month does not start where the invoice of the month before ended",
}


def _refused(uow: UnitOfWork) -> list[dict[str, Any]]:
    """The drafts that do not reconcile (see the `problem` of _DRAFT_HEADERS). Their tenants get no
    invoice: the ledger would be wrong, and that is for a person to look at; nothing is fixed silently.
    Every other tenant is still invoiced."""
    text_of = money.format_decimal
    return [{"tenantId": r.tenant_id, "problem": r.problem, "message": PROBLEMS[r.problem],
             "openingBalance": text_of(r.opening_balance), "closingBalance": text_of(r.closing_balance),
             "credits": text_of(r.total_credits), "usage": text_of(r.usage_exact), "debits": text_of(-r.debits),
             "previousClosingBalance": None if r.previous_closing is None else text_of(r.previous_closing)}
            for r in uow.connection.execute(text("""
                SELECT tenant_id, problem, opening_balance, closing_balance, total_credits, usage_exact, debits,
                       previous_closing
                FROM invoice_draft_headers WHERE problem IS NOT NULL ORDER BY tenant_id"""))]


def _tenants_of(uow: UnitOfWork, period: Period) -> list[str]:
    """The tenants whose ledger moved money in the month (or in the margin before it), in order: an
    operator-wide scan without locks, through the ledger's BRIN index on the time."""
    return list(uow.connection.execute(text("""
        SELECT DISTINCT tenant_id FROM ledger_entries /* citus:operator-scan rollup-tenants */
        WHERE created_at >= :margin_start AND created_at < :end AND entry_type NOT IN ('hold', 'hold_release')
        ORDER BY 1
    """), {"margin_start": period.start - SETTLE_MARGIN, "end": period.end}).scalars())


def ensure_closed(uow: UnitOfWork, period: Period) -> None:
    """Raise PeriodNotClosed unless the month is over and no transaction that began before its end is
    still open (it could still write a ledger entry dated in the month)."""
    now = uow.now()
    if now < period.end:
        state = "future" if now < period.start else "open"
        raise PeriodNotClosed(
            f"{period.label} is {'in the future' if state == 'future' else 'still open'}; it can be invoiced "
            f"from {period.end.isoformat()} (its draft: GET /invoices/preview)",
            {"field": "period", "period": period.label, "state": state, "closesAt": period.end.isoformat()})
    open_before = uow.connection.execute(text("""
        SELECT count(*) FROM pg_stat_activity
        WHERE datname = current_database() AND backend_type = 'client backend'
          AND pid <> pg_backend_pid() AND xact_start < :end
    """), {"end": period.end}).scalar_one()
    if open_before:
        raise PeriodNotClosed(
            f"{period.label} is still settling: {open_before} transaction(s) begun before its end are open",
            {"field": "period", "period": period.label, "state": "settling", "openTransactions": open_before})


def rollup(uow: UnitOfWork, period: Period, *, tenant_id: str | None = None,
           task_id: str | None = None) -> RollupResult:
    """Finalize the invoices of a closed month for every tenant with money moving in it (or for one
    tenant), and commit. Running it again, or concurrently, writes nothing more. Returns the invoices
    this run created (hook notifications of `invoice.finalized` on them)."""
    started = time.perf_counter()
    _tune(uow, rollup=True)
    connection = uow.connection
    started_at = uow.now()
    connection.execute(text("SELECT pg_advisory_xact_lock(:namespace, :period)"),
                       {"namespace": ADVISORY_NAMESPACE, "period": period.index()})
    ensure_closed(uow, period)
    columns = ", ".join(_DRAFT_COLUMNS)
    line_columns = ", ".join(c for c in _LINE_INSERT_COLUMNS)
    write = text(_WRITE.format(
        columns=columns, columns_h=", ".join(f"h.{c}" for c in _DRAFT_COLUMNS),
        line_columns=f"tenant_id, {line_columns}",
        line_columns_l=", ".join(f"l.{c}" for c in ["tenant_id", *_LINE_INSERT_COLUMNS])))
    created: list[tuple[uuid.UUID, str]] = []
    refused: list[dict[str, Any]] = []
    lines = 0
    # one tenant at a time, in tenant order (every statement on one tenant's rows: Citus runs each on the
    # tenant's shard); each invoice takes the next number of its issuer's series: the platform's, or for a
    # sub-account its agency's (white label)
    for tenant in [tenant_id] if tenant_id is not None else _tenants_of(uow, period):
        _prepare(uow, period, tenant)
        refused += _refused(uow)
        to_write = connection.execute(text("""
            SELECT count(*) FROM invoice_draft_headers h WHERE h.problem IS NULL
              AND NOT EXISTS (SELECT 1 FROM invoices i WHERE i.tenant_id = :tenant_id AND i.period = h.period)
        """), {"tenant_id": tenant}).scalar_one()
        if to_write == 0:
            continue
        issuer = parties.issuer_for(uow, tenant)
        series = numbering.take(uow, issuer.id, to_write)  # the series stays locked until the commit
        rows = connection.execute(write, {
            "prefix": series.prefix, "first_number": series.first, "digits": numbering.DIGITS,
            "issuer_id": issuer.id, "issuer": json.dumps(issuer.block()), "tenant_id": tenant}).all()
        if len(rows) != to_write:  # cannot happen under the period's lock; never leave a gap if it does
            raise RuntimeError(f"invoice rollup wrote {len(rows)} invoices, numbered {to_write}")
        numbering.record(uow, series, [(int(r.number[len(series.prefix):]), r.tenant_id, "invoice", r.id)
                                       for r in rows], uow.now())
        created += [(r.id, r.tenant_id) for r in rows]
        lines += int(rows[0].lines) if rows else 0
    if refused:
        log.error("invoice rollup refuses tenants whose ledger does not reconcile", period=period.label,
                  tenants_refused=len(refused), refused=refused[:20])
    connection.execute(text("""
        INSERT INTO invoice_runs (id, period, tenant_id, task_id, invoices_created, lines_created, refused,
                                  started_at)
        VALUES (:id, :period, :tenant_id, :task_id, :invoices, :lines, CAST(:refused AS jsonb), :started_at)
    """), {"id": uuid.uuid4(), "period": period.first_day, "tenant_id": tenant_id, "task_id": task_id,
           "invoices": len(created), "lines": lines, "refused": json.dumps(refused), "started_at": started_at})
    uow.commit()
    return RollupResult(period, tenant_id, created, lines, round((time.perf_counter() - started) * 1000), refused)


def end_what_is_due_in_open_month(uow: UnitOfWork, tenant_id: str, period: Period) -> None:
    """Before a draft of the month still open: that month ends at the present, so what has expired by
    now belongs in it (as GET /wallet shows it), even if the expiry job has not come round yet. Commits
    when the period is the open month; the draft is then computed in a new unit of work."""
    now = uow.now()
    if period.start <= now < period.end:
        expiry.end_what_is_due(uow, tenant_id)
        uow.commit()


def preview(uow: UnitOfWork, tenant_id: str, period: Period) -> Invoice:
    """The draft of a month for one tenant, computed by the rollup's SQL; nothing is stored. A month
    without money moving gives a draft without lines whose balances are the balance at its start."""
    now = uow.now()
    if now < period.start:
        raise PeriodNotStarted(f"{period.label} has not started", {"field": "period", "period": period.label})
    _tune(uow, rollup=False)
    _prepare(uow, period, tenant_id)
    header = uow.connection.execute(text(
        f"SELECT {', '.join(_DRAFT_COLUMNS)}, problem FROM invoice_draft_headers")).one_or_none()
    if header is None:
        draft = _empty_draft(uow, tenant_id, period)
    else:
        lines = uow.connection.execute(text(
            f"SELECT {', '.join(_LINE_COLUMNS)} FROM invoice_draft_lines ORDER BY line_no")).all()
        draft = Invoice(id=None, status=DRAFT, created_at=now, finalized_at=None,
                        lines=tuple(InvoiceLine(**r._mapping) for r in lines), **header._mapping)
    # a draft shows who it would be from and to, as of now; it has no number (only issuing gives one)
    issuer = parties.issuer_for(uow, tenant_id)
    draft = replace(draft, issuer_id=issuer.id, issuer=issuer.block(), customer=parties.customer_block(uow, tenant_id))
    uow.rollback()
    return draft


def _empty_draft(uow: UnitOfWork, tenant_id: str, period: Period) -> Invoice:
    row = uow.connection.execute(text("""
        SELECT w.id, w.currency,
               (SELECT l.balance_after FROM ledger_entries l
                WHERE l.tenant_id = w.tenant_id AND l.wallet_id = w.id AND l.created_at < :start
                ORDER BY l.seq DESC LIMIT 1) AS balance
        FROM wallets w WHERE w.tenant_id = :tenant_id
    """), {"tenant_id": tenant_id, "start": period.start}).one_or_none()
    currency = row.currency if row else "USD"
    balance = row.balance if row is not None and row.balance is not None else Decimal(0)
    zero = Decimal(0)
    return Invoice(id=None, tenant_id=tenant_id, wallet_id=row.id if row else None, period=period.first_day,
                   period_start=period.start, period_end=period.end, status=DRAFT, currency=currency,
                   minor_unit=minor_unit(currency), first_seq=None, last_seq=None, entry_count=0,
                   opening_balance=balance, closing_balance=balance, usage_exact=zero, total_usage=zero,
                   rounding_difference=zero, topups=zero, refunds=zero, adjustments=zero, expiries=zero,
                   total_credits=zero, usage_line_count=0, credit_line_count=0, created_at=uow.now(),
                   finalized_at=None)


# --- reading stored invoices -------------------------------------------------------------------------

def get_invoice(uow: UnitOfWork, tenant_id: str, invoice_id: uuid.UUID) -> Invoice:
    """One of the tenant's invoices with its lines; another tenant's is not found."""
    header = uow.connection.execute(text(f"""
        SELECT {', '.join(_HEADER_COLUMNS)} FROM invoices WHERE tenant_id = :tenant_id AND id = :id
    """), {"tenant_id": tenant_id, "id": invoice_id}).one_or_none()
    if header is None:
        raise NotFound(f"invoice {invoice_id} not found")
    lines = uow.connection.execute(text(f"""
        SELECT {', '.join(_LINE_COLUMNS)} FROM invoice_lines
        WHERE tenant_id = :tenant_id AND invoice_id = :id ORDER BY line_no
    """), {"tenant_id": tenant_id, "id": invoice_id}).all()
    return Invoice(**header._mapping, lines=tuple(InvoiceLine(**r._mapping) for r in lines))


def list_invoices(uow: UnitOfWork, tenant_id: str, *, limit: int, cursor: str | None = None,
                  period_from: Period | None = None, period_to: Period | None = None
                  ) -> tuple[list[Invoice], str | None]:
    """A page of the tenant's invoices (without lines), newest period first."""
    conditions, params = ["tenant_id = :tenant_id"], {"tenant_id": tenant_id, "limit": limit + 1}
    if period_from is not None:
        conditions.append("period >= :period_from")
        params["period_from"] = period_from.first_day
    if period_to is not None:
        conditions.append("period <= :period_to")
        params["period_to"] = period_to.first_day
    if cursor:
        after_start, after_id = decode_cursor(cursor)
        conditions.append("(period_start, id) < (:after_start, :after_id)")
        params.update(after_start=after_start, after_id=after_id)
    rows = uow.connection.execute(text(f"""
        SELECT {', '.join(_HEADER_COLUMNS)} FROM invoices WHERE {' AND '.join(conditions)}
        ORDER BY period_start DESC, id DESC LIMIT :limit
    """), params).all()
    found = [Invoice(**r._mapping) for r in rows[:limit]]
    next_cursor = encode_cursor(found[-1].period_start, found[-1].id) if len(rows) > limit else None  # type: ignore[arg-type]
    return found, next_cursor


def runs(uow: UnitOfWork, period: Period) -> list[dict[str, Any]]:
    """The rollup runs of a month, newest first (operators' view; every tenant)."""
    return [dict(r._mapping) for r in uow.connection.execute(text("""
        SELECT id, period, tenant_id, task_id, invoices_created, lines_created, started_at, finished_at
        FROM invoice_runs WHERE period = :period ORDER BY started_at DESC
    """), {"period": period.first_day})]

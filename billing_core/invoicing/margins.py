"""Margins: revenue, provider cost and margin of charged usage, less refunds, from the same items
that were charged — by tenant, feature, category, provider or model, over a period of event times.

Revenue is what the items were charged, less what was refunded of their events, less what corrections
credited back (voids, amends, the event's share of re-rates) plus what they debited. A refund is of an
event (a debit), so it is taken off the event's items last item first, each down to zero at most:
exact, and the same every time; a correction's credit is taken off the same way after the refunds, and a
correction's debit is added to the event's last item. `corrections` says what corrections changed
(positive: revenue taken off), so original = revenue + corrections. Costs stay as charged (the platform
paid its provider anyway). Events are selected by when the usage occurred (occurredAt).
Revenue, cost and margin are those of the costed items; an item with no provider cost in force at
its event's time is uncosted and counted apart, never as a zero cost.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal

from sqlalchemy import text
from sqlalchemy.engine import Connection

from billing_core import money
from billing_core.catalog.positions import month_of
from billing_core.db import UnitOfWork
from billing_core.invoicing.invoices import InvoiceLine, Period, preview

GROUPINGS = {"tenant": "e.tenant_id", "featureKey": "e.feature_key", "category": "i.category",
             "provider": "i.provider", "model": "i.provider || '/' || i.model"}
ZERO = Decimal(0)


@dataclass(frozen=True)
class MarginGroup:
    key: str
    revenue: Decimal  # of the costed items
    cost: Decimal
    events: int
    uncosted_revenue: Decimal
    uncosted_items: int
    corrections: Decimal = ZERO  # what corrections took off revenue, costed and uncosted (both are net of it)

    @property
    def margin(self) -> Decimal:
        return money.subtract(self.revenue, self.cost)

    @property
    def margin_percent(self) -> Decimal | None:
        return margin_percent(self.revenue, self.cost)


def margin_percent(revenue: Decimal, cost: Decimal) -> Decimal | None:
    """margin / revenue x 100, to two places (a ratio for people, not an amount); None without revenue."""
    if revenue == 0:
        return None
    return (money.subtract(revenue, cost) * 100 / revenue).quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN)


@dataclass(frozen=True)
class Margins:
    groups: list[MarginGroup]

    @property
    def revenue(self) -> Decimal:
        return money.total(g.revenue for g in self.groups)

    @property
    def cost(self) -> Decimal:
        return money.total(g.cost for g in self.groups)

    @property
    def uncosted_revenue(self) -> Decimal:
        return money.total(g.uncosted_revenue for g in self.groups)

    @property
    def corrections(self) -> Decimal:
        return money.total(g.corrections for g in self.groups)

    @property
    def uncosted_items(self) -> int:
        return sum(g.uncosted_items for g in self.groups)


_QUERY = """
WITH refunded AS (
    -- a sub-account's refund gave LAD's revenue back by its agency's share (agency_amount), not the resale
    SELECT r.tenant_id, r.usage_event_id, sum(coalesce(r.agency_amount, r.amount)) AS amount
    FROM ledger_entries r
    WHERE r.entry_type = 'refund' AND r.usage_event_id IS NOT NULL AND r.created_at >= :start {tenant_r}
    GROUP BY 1, 2
), corrected AS (
    SELECT tenant_id, usage_event_id, sum(amount) AS amount FROM (
        SELECT c.tenant_id, c.usage_event_id, coalesce(c.agency_amount, c.amount) AS amount FROM ledger_entries c
        WHERE c.entry_type = 'correction' AND c.usage_event_id IS NOT NULL AND c.created_at >= :start {tenant_c}
        UNION ALL
        -- a sub-account's re-rate moved LAD's revenue by what its agency's price moved (agency_difference)
        SELECT r.tenant_id, r.usage_event_id, coalesce(r.agency_difference, r.difference) FROM rerate_events r
        JOIN rerate_tenants d ON d.tenant_id = r.tenant_id AND d.run_id = r.run_id
        WHERE true {tenant_rr}
    ) AS both_kinds
    GROUP BY 1, 2
), items AS (
    -- LAD's revenue from a sub-account's item is what it charged the agency (agency_cost), not the resale
    SELECT {key} AS key, e.id AS event_id, coalesce(i.agency_cost, i.cost) AS cost, i.provider_cost,
           coalesce(f.amount, 0) AS refunded, coalesce(c.amount, 0) AS corrected,
           -- windows partitioned by the tenant too: Citus pushes a window down to the shards only then
           row_number() OVER (PARTITION BY e.tenant_id, e.id ORDER BY i.position DESC) AS from_last,
           coalesce(sum(coalesce(i.agency_cost, i.cost)) OVER (PARTITION BY e.tenant_id, e.id ORDER BY i.position DESC
                                      ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS later_cost
    FROM usage_events e
    JOIN usage_event_items i ON i.tenant_id = e.tenant_id AND i.usage_event_id = e.id
    LEFT JOIN refunded f ON f.tenant_id = e.tenant_id AND f.usage_event_id = e.id
    LEFT JOIN corrected c ON c.tenant_id = e.tenant_id AND c.usage_event_id = e.id
    WHERE e.status = 'charged' AND e.occurred_at >= :start AND e.occurred_at < :end {tenant_e}
), shares AS (
    SELECT key, event_id, provider_cost,
           i.cost - least(i.cost, greatest(0, i.refunded - i.later_cost)) AS after_refunds,
           i.cost - least(i.cost, greatest(0, i.refunded + greatest(i.corrected, 0) - i.later_cost))
               + CASE WHEN i.from_last = 1 THEN greatest(-i.corrected, 0) ELSE 0 END AS revenue
    FROM items i
), revenue AS (
    SELECT key, event_id, provider_cost, revenue, after_refunds - revenue AS corrections FROM shares
)
SELECT key,
       coalesce(sum(corrections), 0) AS corrections,
       coalesce(sum(revenue) FILTER (WHERE provider_cost IS NOT NULL), 0) AS revenue,
       coalesce(sum(provider_cost), 0) AS cost,
       count(DISTINCT event_id) AS events,
       coalesce(sum(revenue) FILTER (WHERE provider_cost IS NULL), 0) AS uncosted_revenue,
       count(*) FILTER (WHERE provider_cost IS NULL) AS uncosted_items
FROM revenue
GROUP BY key
ORDER BY key
"""


def margins(connection: Connection, *, start: datetime, end: datetime, group_by: str,
            tenant_id: str | None) -> Margins:
    """One set-based query over the charged items of events in [start, end); one tenant's or, for
    the platform operator, every tenant's (the one deliberately cross-tenant read here). Takes a
    connection so the caller can route it to a read replica."""
    tenant = tenant_id is not None
    every = "/* citus:operator-scan operator-reports */"  # every tenant's: an operator-wide scan, no locks
    rows = connection.execute(text(_QUERY.format(
        key=GROUPINGS[group_by],
        tenant_r="AND r.tenant_id = :tenant_id" if tenant else every,
        tenant_c="AND c.tenant_id = :tenant_id" if tenant else every,
        tenant_rr="AND r.tenant_id = :tenant_id" if tenant else every,
        tenant_e="AND e.tenant_id = :tenant_id" if tenant else every)),
        {"start": start, "end": end, "tenant_id": tenant_id}).all()
    return Margins([MarginGroup(r.key, r.revenue, r.cost, r.events, r.uncosted_revenue, r.uncosted_items,
                                r.corrections) for r in rows])


# --- margin per invoice line (operators only) ---------------------------------------------------------
# The usage of a month as its invoice groups it (feature, category, provider, model, unit, unit price,
# prior period), from the events charged in the month, with the provider cost of each line. An item
# priced in tiers spreads its actual quantity over its parts in order (the units of the first tier were
# used first) and each part costs that quantity x the item's unit cost; any other item's cost is all on
# its one part. Refunds are invoice credit lines, not usage, so they are not taken off here.
_INVOICE_LINES = """
WITH parts AS (
    SELECT e.feature_key, i.category, i.provider, i.model, i.unit, i.unit_price, i.quantity,
           i.cost AS revenue, i.provider_cost AS cost, i.unit_cost, e.occurred_at < :start AS prior_period
    FROM usage_events e
    JOIN usage_event_items i ON i.tenant_id = e.tenant_id AND i.usage_event_id = e.id
    WHERE e.tenant_id = :tenant_id AND e.status = 'charged' AND e.charged_at >= :start AND e.charged_at < :end
      AND i.pricing IS NULL
    UNION ALL
    SELECT e.feature_key, i.category, i.provider, i.model,
           CASE WHEN p.part ? 'packageSize' THEN (p.part ->> 'packageSize') || ' ' || i.unit ELSE i.unit END,
           CAST(p.part ->> 'unitPrice' AS numeric), CAST(p.part ->> 'quantity' AS numeric),
           CAST(p.part ->> 'amount' AS numeric),
           CASE WHEN i.pricing ->> 'pricingModel' <> 'graduated' THEN i.provider_cost
                ELSE least(CAST(p.part ->> 'quantity' AS numeric), greatest(0, i.quantity - coalesce(sum(
                         CAST(p.part ->> 'quantity' AS numeric)) OVER (PARTITION BY i.id ORDER BY p.n
                         ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0))) * i.unit_cost END,
           i.unit_cost, e.occurred_at < :start
    FROM usage_events e
    JOIN usage_event_items i ON i.tenant_id = e.tenant_id AND i.usage_event_id = e.id
    CROSS JOIN LATERAL jsonb_array_elements(i.pricing -> 'parts') WITH ORDINALITY AS p (part, n)
    WHERE e.tenant_id = :tenant_id AND e.status = 'charged' AND e.charged_at >= :start AND e.charged_at < :end
      AND i.pricing IS NOT NULL
)
SELECT feature_key, category, provider, model, unit, unit_price, prior_period, sum(quantity) AS quantity,
       coalesce(sum(revenue) FILTER (WHERE unit_cost IS NOT NULL), 0) AS revenue,
       coalesce(sum(cost), 0) AS cost,
       coalesce(sum(revenue) FILTER (WHERE unit_cost IS NULL), 0) AS uncosted_revenue,
       count(*) FILTER (WHERE unit_cost IS NULL) AS uncosted_items
FROM parts
GROUP BY 1, 2, 3, 4, 5, 6, 7
ORDER BY prior_period, feature_key, category, provider, model, unit, unit_price
"""


@dataclass(frozen=True)
class LineMargin:
    feature_key: str
    category: str
    provider: str
    model: str
    unit: str
    unit_price: Decimal | None
    prior_period: bool
    quantity: Decimal
    revenue: Decimal  # of the costed parts
    cost: Decimal
    uncosted_revenue: Decimal
    uncosted_items: int

    @property
    def key(self) -> tuple:
        return (self.feature_key, self.category, self.provider, self.model, self.unit,
                None if self.unit_price is None else money.normalize(self.unit_price), self.prior_period)

    @property
    def margin(self) -> Decimal:
        return money.subtract(self.revenue, self.cost)


def invoice_line_margins(connection: Connection, tenant_id: str, start: datetime, end: datetime) -> list[LineMargin]:
    """Revenue, provider cost and margin of each usage line of the tenant's month [start, end)."""
    rows = connection.execute(text(_INVOICE_LINES), {"tenant_id": tenant_id, "start": start, "end": end}).all()
    return [LineMargin(**r._mapping) for r in rows]


def margins_report(connection: Connection, *, start: datetime | None, end: datetime | None, group_by: str,
                   tenant_id: str | None) -> tuple[Margins, datetime, datetime]:
    """GET /margins and the console's margins page: `margins` over [start, end), by default from the
    start of this UTC month to now (the database's clock); answers the period it used."""
    now = connection.exec_driver_sql("SELECT now()").scalar_one()
    start = start or month_of(now)
    end = end or now
    return margins(connection, start=start, end=end, group_by=group_by, tenant_id=tenant_id), start, end


@dataclass(frozen=True)
class InvoiceLineMargin:
    line: InvoiceLine
    margin: LineMargin | None  # None: no charged item behind the line in the month


@dataclass(frozen=True)
class InvoiceMargins:
    tenant_id: str
    period: Period
    lines: list[InvoiceLineMargin]
    # the month's correction lines (voids, amends, re-rates; positive credited back): the usage lines
    # stay as charged, so net revenue = their revenue - corrections
    corrections: Decimal = ZERO


def invoice_margins(uow: UnitOfWork, tenant_id: str, period: Period | None = None) -> InvoiceMargins:
    """The operators' view of a month's invoice (default: the current month): each usage line of its
    draft, as the invoice groups it, joined with its provider cost and margin. Writes nothing (the
    draft's work tables are rolled back); PeriodNotStarted for a month that has not begun."""
    period = period or Period.containing(uow.now())
    draft = preview(uow, tenant_id, period)
    found = {m.key: m for m in invoice_line_margins(uow.connection, tenant_id, draft.period_start, draft.period_end)}
    uow.rollback()
    corrections = money.total(line.exact_amount for line in draft.credit_lines if line.line_type == "correction")
    return InvoiceMargins(tenant_id, period, [InvoiceLineMargin(line, found.get(_line_key(line)))
                                              for line in draft.usage_lines], corrections)


def _line_key(line: InvoiceLine) -> tuple:
    """LineMargin.key of an invoice line: the invoice's grouping of usage."""
    return (line.feature_key, line.category, line.provider, line.model, line.unit,
            None if line.unit_price is None else money.normalize(line.unit_price), line.prior_period)

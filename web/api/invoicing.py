"""Monthly invoices under /api/billing/invoices: list, one invoice as JSON, CSV or PDF, the draft of a
month (nothing stored), and the rollup of a closed month on demand (billing.admin)."""
from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal

from flask import Response, make_response
from pydantic import Field
from sqlalchemy.engine import Connection

from billing_core import logs, money
from billing_core.agencies import statements, tree
from billing_core.catalog.positions import month_of
from billing_core.documents import credit_notes, receipts
from billing_core.documents.credit_notes import CreditNote
from billing_core.documents.receipts import Receipt
from billing_core.errors import NotFound, ValidationFailed
from billing_core.fields import TenantId
from billing_core.invoicing import invoices
from billing_core.invoicing import margins as margin_report
from billing_core.invoicing.invoices import Invoice, InvoiceLine, Period
from billing_core.invoicing.rendering import (
    credit_note_csv,
    credit_note_pdf,
    invoice_csv,
    invoice_pdf,
    receipt_csv,
    receipt_pdf,
    usage_by_feature,
)
from tasks.invoicing import announce_finalized
from web.api.answers import Answer, DecimalString, Query, TenantQuery, TimeBound, Timestamp, Uuid, ok
from web.api.routing import billing, documented
from web.auth import ADMIN, VIEW, authenticate, tenant_for
from web.limits import rate_limited
from web.parsing import parse_query, path_uuid, time_bound
from web.runtime import read_unit_of_work, runtime, unit_of_work

log = logs.get(__name__)

MAX_IDS_IN_ROLLUP = 1000

PeriodText = Annotated[str, Field(max_length=7, description="a calendar month in UTC, YYYY-MM",
                                  examples=["2026-10"])]


class InvoicesQuery(Query):
    type: Literal["invoice", "receipt", "credit_note"] = "invoice"
    limit: Annotated[int, Field(ge=1, le=invoices.LIST_LIMIT_MAX)] = 50
    cursor: Annotated[str, Field(max_length=200)] | None = None
    from_: Annotated[PeriodText | None, Field(alias="from", description="first month, YYYY-MM")] = None
    to: Annotated[PeriodText | None, Field(description="last month, YYYY-MM")] = None
    tenantId: TenantId | None = None


class PeriodQuery(Query):
    period: PeriodText | None = None  # default: the current month (preview only)
    tenantId: TenantId | None = None


class MarginsQuery(Query):
    from_: Annotated[TimeBound | None, Field(alias="from")] = None  # default: the start of this UTC month
    to: TimeBound | None = None  # default: now
    groupBy: Literal["tenant", "featureKey", "category", "provider", "model", "subAccount"] = Field(
        "tenant", description="subAccount: an agency's resale revenue, its cost (what LAD charges it) and its "
        "margin per sub-account; the one grouping an agency's billing.view token may ask for")
    tenantId: TenantId | None = None


class InvoiceMarginsQuery(Query):
    period: Annotated[str, Field(max_length=7, description="YYYY-MM; default: the current month")] | None = None
    tenantId: TenantId | None = None


# --- response models ------------------------------------------------------------------------------

class InvoiceLineOut(Answer):
    lineNumber: int
    featureKey: str
    category: str
    provider: str
    model: str
    unit: str
    quantity: DecimalString
    unitPrice: DecimalString | None
    amount: DecimalString = Field(description="exactAmount rounded once, half to even, to the minor unit")
    exactAmount: DecimalString
    roundingDifference: DecimalString = Field(description="amount - exactAmount")
    priorPeriod: bool = Field(description="usage that occurred before the period (occurredAt) and was charged in it")
    items: int
    description: str | None


class CreditLineOut(Answer):
    lineNumber: int
    type: Literal["topup", "refund", "adjustment", "expiry", "correction"]
    description: str
    creditKind: str | None
    featureKey: str | None
    entries: int
    amount: DecimalString


class CreditsOut(Answer):
    topups: DecimalString
    refunds: DecimalString
    adjustments: DecimalString
    expiries: DecimalString


class ReconciliationOut(Answer):
    """openingBalance + credits - usage = closingBalance, exactly, against the ledger."""
    openingBalance: DecimalString
    credits: DecimalString
    usage: DecimalString
    closingBalance: DecimalString
    balanced: bool
    problem: str | None = Field(description="why a draft does not reconcile (it would not be finalized)")


class LedgerRangeOut(Answer):
    firstSequence: int | None
    lastSequence: int | None
    entries: int


class DocumentPartyOut(Answer):
    """The issuer or the customer as the document was issued with (later changes do not rewrite it)."""
    legalName: str
    address: str
    taxId: str | None
    email: str | None = None


class InvoiceSummaryOut(Answer):
    id: Uuid | None
    type: Literal["invoice"]
    number: str | None = Field(description="the next number of the issuer's series; null on drafts")
    issuedAt: Timestamp | None
    issuer: DocumentPartyOut | None
    customer: DocumentPartyOut | None = Field(description="the tenant's billing details when issued, if set")
    tenantId: str
    period: str
    status: Literal["draft", "finalized"]
    currency: str
    minorUnit: int
    periodStart: Timestamp
    periodEnd: Timestamp
    openingBalance: DecimalString
    closingBalance: DecimalString
    totalUsage: DecimalString = Field(description="the sum of the rounded usage lines")
    totalUsageExact: DecimalString = Field(description="what the debits took, exactly")
    roundingDifference: DecimalString = Field(description="totalUsage - totalUsageExact")
    totalCredits: DecimalString = Field(description="top-ups + refunds + adjustments + expiries (signed)")
    credits: CreditsOut
    reconciliation: ReconciliationOut
    ledger: LedgerRangeOut
    createdAt: Timestamp | None
    finalizedAt: Timestamp | None


class FeatureUsageOut(Answer):
    featureKey: str
    amount: DecimalString = Field(description="the sum of the feature's rounded usage lines")


class InvoiceOut(InvoiceSummaryOut):
    usageByFeature: list[FeatureUsageOut] = Field(description="the summary of page 1 of the PDF")
    lines: list[InvoiceLineOut]
    creditLines: list[CreditLineOut]


class ReceiptOut(Answer):
    """The receipt of a credit purchase (a paid grant): the tax document of prepaid credits. The
    amount paid is the gross; net + tax = gross exactly."""
    id: Uuid
    type: Literal["receipt"]
    number: str
    issuedAt: Timestamp
    issuer: DocumentPartyOut
    customer: DocumentPartyOut | None
    tenantId: str
    status: Literal["finalized"]
    currency: str
    minorUnit: int
    grantId: Uuid
    source: str = Field(description="topup (an operator's paid top-up) or stripe (a payment, an auto top-up)")
    description: str | None
    net: DecimalString
    tax: DecimalString
    gross: DecimalString = Field(description="what was paid, and the credits granted")
    taxMode: Literal["rate", "reverse_charge", "exempt"]
    taxRate: DecimalString | None
    taxLabel: str | None
    taxWording: str | None = Field(description="reverse charge or exemption wording; null when tax is charged")
    roundingDifference: DecimalString = Field(description="tax - net x taxRate, from rounding net to the minor unit")


class CreditNoteLineOut(Answer):
    featureKey: str
    category: str
    provider: str
    model: str
    unit: str
    quantityBefore: DecimalString
    amountBefore: DecimalString
    quantityAfter: DecimalString
    amountAfter: DecimalString


class CreditNoteOut(Answer):
    """A credit note (a correction credited back) or debit note (debited) for a month already invoiced:
    the invoice stays as it was; the note names it and each corrected line."""
    id: Uuid
    type: Literal["credit_note"]
    kind: Literal["credit_note", "debit_note"]
    number: str
    issuedAt: Timestamp
    issuer: DocumentPartyOut
    customer: DocumentPartyOut | None
    tenantId: str
    status: Literal["finalized"]
    currency: str
    minorUnit: int
    correctsInvoiceId: Uuid
    correctsInvoiceNumber: str | None
    period: str = Field(description="the month of the invoice it corrects, YYYY-MM")
    usageEventId: Uuid | None = Field(description="the corrected event; null for a re-rate's note")
    transactionId: Uuid = Field(description="the correction's ledger entry")
    amount: DecimalString = Field(description="what the balance moved: positive credited back, negative debited")
    reason: str
    lines: list[CreditNoteLineOut]


class InvoiceResponse(Answer):
    success: Literal[True]
    invoice: InvoiceOut | ReceiptOut | CreditNoteOut


class InvoicesResponse(Answer):
    success: Literal[True]
    invoices: list[InvoiceSummaryOut | ReceiptOut | CreditNoteOut]
    nextCursor: str | None


class RefusedOut(Answer):
    tenantId: str
    problem: Literal["broken_chain", "usage_differs_from_debits", "unknown_entries", "gap_after_previous_invoice"]
    message: str
    openingBalance: DecimalString
    closingBalance: DecimalString
    credits: DecimalString
    usage: DecimalString
    debits: DecimalString
    previousClosingBalance: DecimalString | None


class RollupOut(Answer):
    period: str
    tenantId: str | None
    invoicesCreated: int
    linesCreated: int
    invoiceIds: list[Uuid] = Field(description=f"the invoices this run finalized (the first {MAX_IDS_IN_ROLLUP})")
    milliseconds: int
    refused: list[RefusedOut] = Field(description="tenants left without an invoice: their ledger does not reconcile")


class RollupResponse(Answer):
    success: Literal[True]
    rollup: RollupOut


class MarginGroup(Answer):
    key: str
    revenue: DecimalString
    cost: DecimalString
    margin: DecimalString
    marginPercent: DecimalString | None
    events: int
    uncostedRevenue: DecimalString
    uncostedItems: int
    corrections: DecimalString = Field(description="what voids, amends and re-rates took off the revenue, costed "
                                                   "and uncosted (both are net of it)")


class Uncosted(Answer):
    revenue: DecimalString
    items: int


class Margins(Answer):
    """Over charged usage less refunds: revenue, cost and margin of the costed items; items with no
    provider cost in force are counted apart (`uncosted`), never as a zero cost."""
    revenue: DecimalString
    cost: DecimalString
    margin: DecimalString
    marginPercent: DecimalString | None
    corrections: DecimalString = Field(description="what corrections took off the revenue (revenue is net)")
    groups: list[MarginGroup]
    uncosted: Uncosted
    groupBy: str
    from_: Annotated[Timestamp, Field(alias="from")]
    to: Timestamp


class MarginsResponse(Answer):
    success: Literal[True]
    margins: Margins


class InvoiceLineMargin(Answer):
    lineNumber: int
    featureKey: str | None
    category: str | None
    provider: str | None
    model: str | None
    unit: str | None
    unitPrice: DecimalString | None
    quantity: DecimalString | None
    exactAmount: DecimalString
    priorPeriod: bool
    revenue: DecimalString  # of the costed parts of the line
    cost: DecimalString
    margin: DecimalString
    marginPercent: DecimalString | None
    uncostedRevenue: DecimalString
    uncostedItems: int


class InvoiceMargins(Answer):
    """Operators only: a month's invoice usage lines with their provider cost and margin."""
    tenantId: str
    period: str
    lines: list[InvoiceLineMargin]
    corrections: DecimalString = Field(description="the month's correction lines (voids, amends, re-rates; "
                                                   "positive credited back): the lines stay as charged")


class InvoiceMarginsResponse(Answer):
    success: Literal[True]
    invoiceMargins: InvoiceMargins


# --- representations ------------------------------------------------------------------------------

def usage_line(line: InvoiceLine) -> InvoiceLineOut:
    return InvoiceLineOut(
        lineNumber=line.line_no, featureKey=line.feature_key, category=line.category, provider=line.provider,
        model=line.model, unit=line.unit, quantity=line.quantity, unitPrice=line.unit_price, amount=line.amount,
        exactAmount=line.exact_amount, roundingDifference=line.rounding_difference, priorPeriod=line.prior_period,
        items=line.item_count, description=line.description)


def credit_line(line: InvoiceLine) -> CreditLineOut:
    return CreditLineOut(lineNumber=line.line_no, type=line.line_type, description=line.description,
                         creditKind=line.credit_kind, featureKey=line.feature_key, entries=line.item_count,
                         amount=line.amount)


def _party(block: dict[str, Any] | None) -> DocumentPartyOut | None:
    return None if block is None else DocumentPartyOut(**block)


def _summary_fields(inv: Invoice) -> dict[str, Any]:
    return {
        "id": inv.id, "type": "invoice", "number": inv.number, "issuedAt": inv.issued_at,
        "issuer": _party(inv.issuer), "customer": _party(inv.customer),
        "tenantId": inv.tenant_id, "period": inv.period_label, "status": inv.status,
        "currency": inv.currency, "minorUnit": inv.minor_unit, "periodStart": inv.period_start,
        "periodEnd": inv.period_end, "openingBalance": inv.opening_balance, "closingBalance": inv.closing_balance,
        "totalUsage": inv.total_usage, "totalUsageExact": inv.usage_exact,
        "roundingDifference": inv.rounding_difference, "totalCredits": inv.total_credits,
        "credits": CreditsOut(topups=inv.topups, refunds=inv.refunds, adjustments=inv.adjustments,
                              expiries=inv.expiries),
        "reconciliation": ReconciliationOut(openingBalance=inv.opening_balance, credits=inv.total_credits,
                                            usage=inv.usage_exact, closingBalance=inv.closing_balance,
                                            balanced=inv.reconciles, problem=inv.problem),
        "ledger": LedgerRangeOut(firstSequence=inv.first_seq, lastSequence=inv.last_seq, entries=inv.entry_count),
        "createdAt": inv.created_at, "finalizedAt": inv.finalized_at,
    }


def invoice_summary(inv: Invoice) -> InvoiceSummaryOut:
    return InvoiceSummaryOut(**_summary_fields(inv))


def invoice_out(inv: Invoice) -> InvoiceOut:
    return InvoiceOut(**_summary_fields(inv), lines=[usage_line(line) for line in inv.usage_lines],
                      usageByFeature=[FeatureUsageOut(featureKey=feature, amount=amount)
                                      for feature, amount in usage_by_feature(inv)],
                      creditLines=[credit_line(line) for line in inv.credit_lines])


def receipt_out(r: Receipt) -> ReceiptOut:
    issuer = _party(r.issuer)
    assert issuer is not None
    return ReceiptOut(
        id=r.id, type="receipt", number=r.number, issuedAt=r.issued_at, issuer=issuer, customer=_party(r.customer),
        tenantId=r.tenant_id, status="finalized", currency=r.currency, minorUnit=r.minor_unit, grantId=r.grant_id,
        source=r.source, description=r.description, net=r.net, tax=r.tax, gross=r.gross, taxMode=r.tax_mode,
        taxRate=r.tax_rate, taxLabel=r.tax_label, taxWording=r.tax_wording, roundingDifference=r.rounding_difference)


def credit_note_out(n: CreditNote) -> CreditNoteOut:
    issuer = _party(n.issuer)
    assert issuer is not None
    return CreditNoteOut(
        id=n.id, type="credit_note", kind=n.kind, number=n.number, issuedAt=n.issued_at,
        issuer=issuer, customer=_party(n.customer), tenantId=n.tenant_id, status="finalized", currency=n.currency,
        minorUnit=n.minor_unit, correctsInvoiceId=n.corrects_invoice_id, correctsInvoiceNumber=n.corrects_invoice_number,
        period=n.period_label, usageEventId=n.usage_event_id, transactionId=n.ledger_entry_id, amount=n.amount,
        reason=n.reason, lines=[CreditNoteLineOut(**line) for line in n.lines])


# --- handlers -------------------------------------------------------------------------------------

def _period(value: str | None, default: Period | None = None) -> Period:
    if value is None and default is not None:
        return default
    return Period.parse(value)


@billing.get("/invoices")
@documented({200: InvoicesResponse}, 404, 403, query=InvoicesQuery)
@rate_limited(VIEW)
def get_invoices() -> Response:
    """The tenant's issued documents of one `type`: monthly invoices (the default; newest month first,
    without their lines), receipts of credit purchases (newest first), or credit notes."""
    principal = authenticate(VIEW)
    query = parse_query(InvoicesQuery)
    tenant_id = tenant_for(principal, query.tenantId)
    if query.type != "invoice":
        if query.type == "credit_note":  # credit and debit notes of corrections of invoiced months
            with read_unit_of_work() as uow:
                notes, next_cursor = credit_notes.list_credit_notes(uow, tenant_id, limit=query.limit,
                                                                    cursor=query.cursor)
            return ok(InvoicesResponse, invoices=[credit_note_out(n) for n in notes], nextCursor=next_cursor)
        with read_unit_of_work() as uow:
            found_receipts, next_cursor = receipts.list_receipts(uow, tenant_id, limit=query.limit,
                                                                 cursor=query.cursor)
        return ok(InvoicesResponse, invoices=[receipt_out(r) for r in found_receipts], nextCursor=next_cursor)
    period_from = Period.parse(query.from_, "from") if query.from_ else None
    period_to = Period.parse(query.to, "to") if query.to else None
    with read_unit_of_work() as uow:
        found, next_cursor = invoices.list_invoices(uow, tenant_id, limit=query.limit, cursor=query.cursor,
                                                    period_from=period_from, period_to=period_to)
    return ok(InvoicesResponse, invoices=[invoice_summary(i) for i in found], nextCursor=next_cursor)


@billing.get("/invoices/preview")
@documented({200: InvoiceResponse}, 404, 403, 409, query=PeriodQuery)
@rate_limited(VIEW)
def get_invoice_preview() -> Response:
    """The draft of a month (default: the current one), computed as the rollup computes it; nothing is
    stored. 409 period_not_started for a month in the future."""
    principal = authenticate(VIEW)
    query = parse_query(PeriodQuery)
    tenant_id = tenant_for(principal, query.tenantId)
    with unit_of_work() as uow:
        period = _period(query.period, Period.containing(uow.now()))
        invoices.end_what_is_due_in_open_month(uow, tenant_id, period)
    with unit_of_work() as uow:  # the preview's SQL uses temporary tables, which a replica cannot have
        draft = invoices.preview(uow, tenant_id, period)  # 409 period_not_started for a future month
    return ok(InvoiceResponse, invoice=invoice_out(draft))


@billing.post("/invoices/rollup")
@documented({200: RollupResponse}, 403, 409, query=PeriodQuery)
@rate_limited(ADMIN)
def post_invoice_rollup() -> Response:
    """Finalize the invoices of a closed month now (what the monthly job does on the 1st at 00:15 UTC):
    every tenant with money moving in it, or only `tenantId`. Running it again creates nothing more.
    409 period_not_closed for the current month, a future one, or one still settling."""
    authenticate(ADMIN)
    query = parse_query(PeriodQuery)
    if query.period is None:
        raise ValidationFailed("period", "is required: the month to invoice, as YYYY-MM")
    period = _period(query.period)
    with unit_of_work() as uow:
        result = invoices.rollup(uow, period, tenant_id=query.tenantId)  # 409 period_not_closed
    announce_finalized(period, result.created)
    log.info("invoice rollup", period=period.label, invoices=len(result.created), lines=result.lines_created,
             duration_ms=result.milliseconds)
    return ok(RollupResponse, rollup=RollupOut(
        period=period.label, tenantId=query.tenantId, invoicesCreated=len(result.created),
        linesCreated=result.lines_created, invoiceIds=result.invoice_ids[:MAX_IDS_IN_ROLLUP],
        milliseconds=result.milliseconds, refused=result.refused))


def stored_document(uow: Any, tenant_id: str, wanted: Any) -> Invoice | Receipt | CreditNote:
    """The tenant's invoice, receipt or credit note with this id (the API's and the portal's); NotFound otherwise."""
    try:
        return invoices.get_invoice(uow, tenant_id, wanted)
    except NotFound:
        pass
    try:
        return receipts.get_receipt(uow, tenant_id, wanted)
    except NotFound:
        return credit_notes.get_credit_note(uow, tenant_id, wanted)


def _stored(invoice_id: str) -> Invoice | Receipt | CreditNote:
    """An issued document of the tenant's, whatever its type (invoices and receipts share /invoices)."""
    principal = authenticate(VIEW)
    query = parse_query(TenantQuery)
    tenant_id = tenant_for(principal, query.tenantId)
    wanted = path_uuid(invoice_id, "invoice")
    try:
        with read_unit_of_work() as uow:
            return stored_document(uow, tenant_id, wanted)
    except NotFound:
        # an invoice finalized a moment ago may not have reached the replica yet: the primary decides
        with unit_of_work() as uow:
            return stored_document(uow, tenant_id, wanted)


def invoice_file(inv: Invoice | Receipt | CreditNote, extension: str) -> Response:
    """The document as a download: `pdf` or `csv` (the API's and the portal's)."""
    if isinstance(inv, CreditNote):
        body, mimetype = ((credit_note_pdf(inv), "application/pdf") if extension == "pdf"
                          else (credit_note_csv(inv), "text/csv"))
        name = f"{inv.kind.replace('_', '-')}-{inv.number}"
    elif isinstance(inv, Receipt):
        body, mimetype = ((receipt_pdf(inv), "application/pdf") if extension == "pdf"
                          else (receipt_csv(inv), "text/csv"))
        name = f"receipt-{inv.number}"
    else:
        body, mimetype = ((invoice_pdf(inv), "application/pdf") if extension == "pdf"
                          else (invoice_csv(inv), "text/csv"))
        name = f"invoice-{inv.number}" if inv.number else f"invoice-{inv.tenant_id}-{inv.period_label}"
    response = make_response(body)
    response.mimetype = mimetype
    response.headers["Content-Disposition"] = f'attachment; filename="{name}.{extension}"'
    return response


@billing.get("/invoices/<invoice_id>.csv")
@documented({200: None}, 403, 404, query=TenantQuery)
@rate_limited(VIEW)
def get_invoice_csv(invoice_id: str) -> Response:
    """The invoice as CSV (text/csv): its lines, then its totals; every row names the invoice."""
    return invoice_file(_stored(invoice_id), "csv")


@billing.get("/invoices/<invoice_id>.pdf")
@documented({200: None}, 403, 404, query=TenantQuery)
@rate_limited(VIEW)
def get_invoice_pdf(invoice_id: str) -> Response:
    """The invoice as a PDF document."""
    return invoice_file(_stored(invoice_id), "pdf")


@billing.get("/invoices/<invoice_id>")
@documented({200: InvoiceResponse}, 403, 404, query=TenantQuery)
@rate_limited(VIEW)
def get_invoice(invoice_id: str) -> Response:
    """One document: an invoice with its usage and credit lines, or a receipt; another tenant's is
    not found."""
    found = _stored(invoice_id)
    if isinstance(found, CreditNote):
        return ok(InvoiceResponse, invoice=credit_note_out(found))
    return ok(InvoiceResponse, invoice=receipt_out(found) if isinstance(found, Receipt) else invoice_out(found))


@billing.get("/margins")
@documented({200: MarginsResponse}, 403, 404, query=MarginsQuery)
@rate_limited(VIEW)
def get_margins() -> Response:
    """Revenue, provider cost and margin of charged usage less refunds, by event time in [from, to)
    (default: this UTC month so far); every tenant, or the one named by tenantId. `groupBy=subAccount`
    (an agency's billing.view token, or the operator naming the agency): the agency's resale revenue,
    its cost at its own prices and its margin, per sub-account."""
    principal = authenticate(VIEW)
    query = parse_query(MarginsQuery)
    if query.groupBy == "subAccount":
        agency = query.tenantId if ADMIN in principal.capabilities and query.tenantId else principal.tenant_id
        return ok(MarginsResponse, margins=agency_margins(agency, query))
    authenticate(ADMIN)
    # a report over many events: the replica's (READ_DATABASE_URL) when there is one
    with runtime().read_engine.connect() as connection:
        report = margins_report(connection, query)
        connection.rollback()
    return ok(MarginsResponse, margins=report)


def agency_margins(agency_id: str, query: MarginsQuery) -> Margins:
    """An agency's margins per sub-account: revenue at resale, cost at the agency's price; no provider
    cost (the operator's alone), so nothing is uncosted."""
    with unit_of_work() as uow:
        if not tree.is_agency(uow, agency_id):
            raise NotFound("this tenant is not an agency")
        now = uow.now()
        start = time_bound(query.from_, "from", end=False) or month_of(now)
        end = time_bound(query.to, "to", end=True) or now
        groups = statements.margins_by_sub_account(uow, agency_id, start, end)
    revenue, cost = money.total(g.revenue for g in groups), money.total(g.cost for g in groups)
    zero = Decimal(0)
    # corrections of sub-accounts' events are not yet split by level: the agency's groups show none
    return Margins(
        revenue=revenue, cost=cost, margin=money.subtract(revenue, cost),
        marginPercent=margin_report.margin_percent(revenue, cost), corrections=zero,
        groups=[MarginGroup(key=g.key, revenue=g.revenue, cost=g.cost, margin=g.margin,
                            marginPercent=margin_report.margin_percent(g.revenue, g.cost), events=g.events,
                            uncostedRevenue=zero, uncostedItems=0, corrections=zero) for g in groups],
        uncosted=Uncosted(revenue=zero, items=0), groupBy=query.groupBy, from_=start, to=end)


def margins_report(connection: Connection, query: MarginsQuery) -> Margins:
    """The margins as GET /margins answers them; the console's margins page shows the same."""
    found, start, end = margin_report.margins_report(
        connection, start=time_bound(query.from_, "from", end=False), end=time_bound(query.to, "to", end=True),
        group_by=query.groupBy, tenant_id=query.tenantId)
    return Margins(
        revenue=found.revenue, cost=found.cost, margin=money.subtract(found.revenue, found.cost),
        marginPercent=margin_report.margin_percent(found.revenue, found.cost),
        groups=[MarginGroup(key=g.key, revenue=g.revenue, cost=g.cost, margin=g.margin,
                            marginPercent=g.margin_percent, events=g.events, uncostedRevenue=g.uncosted_revenue,
                            uncostedItems=g.uncosted_items, corrections=g.corrections) for g in found.groups],
        corrections=found.corrections,
        uncosted=Uncosted(revenue=found.uncosted_revenue, items=found.uncosted_items),
        groupBy=query.groupBy, from_=start, to=end)


@billing.get("/invoices/margins")
@documented({200: InvoiceMarginsResponse}, 404, 403, 409, query=InvoiceMarginsQuery)
@rate_limited(ADMIN)
def get_invoice_margins() -> Response:
    """Operators' view of a month's invoice data (default: the current month): each usage line, as the
    invoice and its preview group them, with its provider cost and margin. The tenant's invoice never
    shows costs. Uncosted parts are counted apart, never as a zero cost."""
    principal = authenticate(ADMIN)
    query = parse_query(InvoiceMarginsQuery)
    tenant_id = tenant_for(principal, query.tenantId)
    with unit_of_work() as uow:
        # a month not started yet is the domain's period_not_started (409)
        found = margin_report.invoice_margins(
            uow, tenant_id, invoices.Period.parse(query.period) if query.period else None)
    lines = []
    for line, m in ((found_line.line, found_line.margin) for found_line in found.lines):
        lines.append(InvoiceLineMargin(
            lineNumber=line.line_no, featureKey=line.feature_key, category=line.category, provider=line.provider,
            model=line.model, unit=line.unit, unitPrice=line.unit_price, quantity=line.quantity,
            exactAmount=line.exact_amount, priorPeriod=line.prior_period,
            revenue=m.revenue if m else "0", cost=m.cost if m else "0", margin=m.margin if m else "0",
            marginPercent=margin_report.margin_percent(m.revenue, m.cost) if m else None,
            uncostedRevenue=m.uncosted_revenue if m else line.exact_amount,
            uncostedItems=m.uncosted_items if m else line.item_count))
    return ok(InvoiceMarginsResponse, invoiceMargins=InvoiceMargins(tenantId=tenant_id, period=found.period.label,
                                                                    lines=lines, corrections=found.corrections))

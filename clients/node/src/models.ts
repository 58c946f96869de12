/** The answers of LAD Billing, as specs (checked against /openapi.json) and the types derived from them.
 * Amounts are decimal strings; fields the service adds later are kept on the objects as they come. */
import {
  boolean, decimal, type Infer, integer, json, list, map, model, nullable, oneOf, optional, text, timestamp,
} from "./spec.js";

export const PriceSpec = model("Price", {
  category: text, provider: text, model: text, unit: text, unitPrice: nullable(decimal), currency: text,
  description: nullable(text), scope: oneOf("global", "tenant"), effectiveFrom: timestamp,
  effectiveTo: nullable(timestamp),
});
export type Price = Infer<typeof PriceSpec>;

export const QuoteLineSpec = model("QuoteLine", {
  category: text, provider: text, model: text, unit: text, quantity: decimal, unitPrice: nullable(decimal), totalCost: decimal,
});
export const QuoteSpec = model("Quote", {
  quoteId: text, expiresAt: timestamp, totalCost: decimal, currency: text, items: list(QuoteLineSpec),
});
export type Quote = Infer<typeof QuoteSpec>;

export const GrantSpec = model("Grant", {
  id: text, kind: oneOf("paid", "promotional", "debt"), amount: decimal, remaining: decimal, priority: integer,
  expiresAt: nullable(timestamp), source: text, createdAt: timestamp,
});
export type Grant = Infer<typeof GrantSpec>;

export const WalletSpec = model("Wallet", {
  id: text, tenantId: text, currentBalance: decimal, reservedBalance: decimal, availableBalance: decimal,
  overdraftLimit: decimal, currency: text, status: oneOf("active", "blocked"), flagged: boolean,
  flagReason: nullable(text), grants: list(GrantSpec),
});
export type Wallet = Infer<typeof WalletSpec>;

/** A ledger entry; `type` is a string because the service may add entry types. */
export const TransactionSpec = model("Transaction", {
  id: text, type: text, amount: decimal, balanceBefore: decimal, balanceAfter: decimal, reservedChange: decimal,
  description: nullable(text), usageEventId: nullable(text), reservationId: nullable(text), grantId: nullable(text),
  relatedTransactionId: nullable(text), createdAt: timestamp,
});
export type Transaction = Infer<typeof TransactionSpec>;

/** An agency's sub-account: `tenantId` is `<agencyId>:<name>` (one it created) or an attached tenant's own id. */
export const SubAccountSpec = model("SubAccount", {
  tenantId: text, funding: oneOf("prepaid", "agency"), spendCap: nullable(decimal), createdAt: timestamp,
});
export type SubAccount = Infer<typeof SubAccountSpec>;

export const CreditSpec = model("Credit", { transaction: TransactionSpec, grant: optional(nullable(GrantSpec)) });
export type Credit = Infer<typeof CreditSpec>;

export const RejectionSpec = model("Rejection", { code: text, message: nullable(text), details: json });

export const UsageEventSpec = model("UsageEvent", {
  id: text, featureKey: text, status: oneOf("pending", "charged", "rejected"), totalCost: nullable(decimal),
  currency: text, externalReferenceId: nullable(text), createdAt: timestamp, chargedAt: nullable(timestamp),
  occurredAt: optional(timestamp), rejection: optional(nullable(RejectionSpec)),
});
export type UsageEvent = Infer<typeof UsageEventSpec>;

export const ChargedSpec = model("Charge", { taskId: text, usageEvent: UsageEventSpec, transaction: TransactionSpec });
export const ChargeAcceptedSpec = model("ChargeAccepted", { taskId: text, usageEvent: UsageEventSpec });

/** A charge's outcome. While it is `pending` (the wait ran out, or `wait: false`) `transaction` is null:
 * `task(taskId)` tells the outcome later. `replayed`: the idempotency key was used before. */
export interface Charge {
  taskId: string;
  usageEvent: UsageEvent;
  transaction: Transaction | null;
  replayed: boolean;
}

export const ErrorInfoSpec = model("ErrorInfo", { code: text, message: text, details: json });
export type ErrorInfo = Infer<typeof ErrorInfoSpec>;

export const BatchResultSpec = model("BatchResult", {
  index: integer, status: oneOf("accepted", "replayed", "error"), taskId: nullable(text),
  usageEventId: nullable(text), error: nullable(ErrorInfoSpec),
});
/** One event's outcome in `charges()`, with the event's idempotency key (given or generated). */
export type BatchResult = Infer<typeof BatchResultSpec> & { idempotencyKey: string };

export const TaskSpec = model("Task", {
  id: text, state: oneOf("pending", "charged", "rejected"), usageEvent: UsageEventSpec,
  transaction: optional(nullable(TransactionSpec)), error: optional(nullable(RejectionSpec)),
});
export type Task = Infer<typeof TaskSpec>;

export const ReservationSpec = model("Reservation", {
  id: text, status: oneOf("active", "settled", "released", "expired"), amount: decimal,
  settledAmount: nullable(decimal), featureKey: text, externalReferenceId: nullable(text), quoteId: nullable(text),
  usageEventId: nullable(text), expiresAt: timestamp, createdAt: timestamp, closedAt: nullable(timestamp),
  // admitted above the plan's base limit: settled at its burst multiplier
  burst: optional(boolean),
});
export type Reservation = Infer<typeof ReservationSpec>;

export const ReservationPageSpec = model("ReservationPage", {
  reservations: list(ReservationSpec), nextCursor: nullable(text),
});
export type ReservationPage = Infer<typeof ReservationPageSpec>;

export const EntitlementSpec = model("Entitlement", {
  allowed: boolean, availableBalance: decimal, reason: nullable(text),
});
export type Entitlement = Infer<typeof EntitlementSpec>;

const BucketSpec = model("UsageBucket", { events: integer, cost: decimal });
export const UsagePageSpec = model("UsagePage", {
  events: list(UsageEventSpec),
  summary: model("UsageSummary", {
    totalEvents: integer, totalCost: decimal, byFeature: map(BucketSpec), byStatus: map(BucketSpec),
  }),
  nextCursor: nullable(text),
});
export type UsagePage = Infer<typeof UsagePageSpec>;

export const UsageEventDetailSpec = model("UsageEventDetail", {
  ...UsageEventSpec.fields,
  metadata: json,
  items: list(model("UsageItem", {
    category: text, provider: text, model: text, unit: text, quantity: decimal, unitPrice: nullable(decimal),
    totalCost: nullable(decimal),
  })),
  taskId: text,
  transactionId: nullable(text),
});
export type UsageEventDetail = Infer<typeof UsageEventDetailSpec>;

/** One call (GET /calls/<externalReferenceId>): `ledgerTotal` is the sum of `entries` (a debit is negative);
 * `providerCost` and `margin` only for billing.admin. */
export const CallStatementSpec = model("CallStatement", {
  externalReferenceId: text,
  holds: list(model("CallHold", {
    id: text, status: oneOf("active", "settled", "released", "expired"), amount: decimal,
    settledAmount: nullable(decimal), burst: boolean, featureKey: text, createdAt: timestamp,
    closedAt: nullable(timestamp),
  })),
  events: list(model("CallEvent", {
    id: text, status: oneOf("pending", "charged", "rejected"), totalCost: nullable(decimal), featureKey: text,
    reservationId: nullable(text), createdAt: timestamp,
  })),
  components: list(model("CallComponent", {
    category: text, quantity: decimal, billedQuantity: decimal, cost: decimal, burst: boolean,
    providerCost: optional(nullable(decimal)),
  })),
  items: list(model("CallItem", {
    usageEventId: text, category: text, provider: text, model: text, unit: text, quantity: decimal,
    billedQuantity: decimal, unitPrice: nullable(decimal), cost: decimal, burst: boolean,
    burstMultiplier: nullable(decimal), providerCost: optional(nullable(decimal)),
  })),
  entries: list(TransactionSpec),
  totalCost: decimal,
  ledgerTotal: decimal,
  providerCost: optional(nullable(decimal)),
  margin: optional(nullable(decimal)),
});
export type CallStatement = Infer<typeof CallStatementSpec>;

export const TransactionPageSpec = model("TransactionPage", {
  transactions: list(TransactionSpec), nextCursor: nullable(text),
});
export type TransactionPage = Infer<typeof TransactionPageSpec>;

const invoiceSummaryFields = {
  id: nullable(text), tenantId: text, period: text, status: oneOf("draft", "finalized"), currency: text,
  periodStart: timestamp, periodEnd: timestamp, openingBalance: decimal, closingBalance: decimal,
  totalUsage: decimal, totalCredits: decimal, finalizedAt: nullable(timestamp),
};
export const InvoiceSummarySpec = model("InvoiceSummary", invoiceSummaryFields);
export const InvoiceSpec = model("Invoice", {
  ...invoiceSummaryFields,
  lines: list(model("InvoiceLine", {
    lineNumber: integer, featureKey: text, category: text, provider: text, model: text, unit: text,
    quantity: decimal, unitPrice: nullable(decimal), amount: decimal, exactAmount: decimal,
  })),
});
export type Invoice = Infer<typeof InvoiceSpec>;
export const InvoicePageSpec = model("InvoicePage", { invoices: list(InvoiceSummarySpec), nextCursor: nullable(text) });
export type InvoicePage = Infer<typeof InvoicePageSpec>;

export {
  BillingClient, Call, newIdempotencyKey, reads,
  type BillingClientOptions, type CallOptions, type ChargeInput, type ChargeOptions, type DecimalInput, type Read,
  type ReserveInput, type TokenSource, type UsageEventInput, type UsageItem,
} from "./client.js";
export * from "./errors.js";
export type {
  BatchResult, CallStatement, Charge, Credit, Entitlement, ErrorInfo, Grant, Invoice, InvoicePage, Price, Quote, Reservation,
  ReservationPage, SubAccount, Task, Transaction, TransactionPage, UsageEvent, UsageEventDetail, UsagePage, Wallet,
} from "./models.js";
export type { DecimalString, Spec } from "./spec.js";
export type { RetryOptions } from "./retry.js";
export { VERSION } from "./version.js";

/** Errors: one class per error code of the LAD Billing contract, each carrying the server's code,
 * message, details and HTTP status (and the request's idempotency key, to repeat it safely). */

export interface BillingErrorInit {
  code?: string;
  details?: Record<string, unknown>;
  status?: number | null;
  requestId?: string | null;
  idempotencyKey?: string | null;
  retryAfter?: number | null;
  cause?: unknown;
}

export class BillingError extends Error {
  static readonly code: string = "billing_error";
  readonly code: string;
  readonly details: Record<string, unknown>;
  readonly status: number | null;
  readonly requestId: string | null;
  readonly idempotencyKey: string | null;
  readonly retryAfter: number | null;

  constructor(message: string, init: BillingErrorInit = {}) {
    super(message, init.cause === undefined ? undefined : { cause: init.cause });
    this.name = new.target.name;
    this.code = init.code ?? (new.target as unknown as { code: string }).code;
    this.details = init.details ?? {};
    this.status = init.status ?? null;
    this.requestId = init.requestId ?? null;
    this.idempotencyKey = init.idempotencyKey ?? null;
    this.retryAfter = init.retryAfter ?? null;
  }
}

/** No answer: the connection failed, dropped or timed out on every attempt. The request may have
 * reached the service; repeating it with the same idempotency key is safe. */
export class NetworkError extends BillingError { static readonly code = "network_error"; }
export class ValidationError extends BillingError { static readonly code = "validation_error"; }
export class Unauthorized extends BillingError { static readonly code = "unauthorized"; }
export class Forbidden extends BillingError { static readonly code = "forbidden"; }
export class NotFound extends BillingError { static readonly code: string = "not_found"; }
export class PriceNotFound extends NotFound { static readonly code = "price_not_found"; }
export class InsufficientBalance extends BillingError { static readonly code = "insufficient_balance"; }
export class ReservationExceeded extends BillingError { static readonly code = "reservation_exceeded"; }
export class BudgetExceeded extends BillingError { static readonly code = "budget_exceeded"; }
export class WalletBlocked extends BillingError { static readonly code = "wallet_blocked"; }
export class IdempotencyConflict extends BillingError { static readonly code = "idempotency_conflict"; }
export class ReservationClosed extends BillingError { static readonly code = "reservation_closed"; }
export class PeriodNotClosed extends BillingError { static readonly code = "period_not_closed"; }
export class PeriodNotStarted extends BillingError { static readonly code = "period_not_started"; }
export class ReservationExpired extends BillingError { static readonly code = "reservation_expired"; }
export class QuoteExpired extends BillingError { static readonly code = "quote_expired"; }
export class RefundExceeded extends BillingError { static readonly code = "refund_exceeded"; }
export class PayloadTooLarge extends BillingError { static readonly code = "payload_too_large"; }
export class InvalidSignature extends BillingError { static readonly code = "invalid_signature"; }
export class RateLimited extends BillingError { static readonly code = "rate_limited"; }
/** Every call slot of the tenant's plan is taken (429): `details.limit`, `details.active`. Not retried. */
export class ConcurrencyLimit extends BillingError { static readonly code = "concurrency_limit"; }
export class InternalError extends BillingError { static readonly code = "internal_error"; }
export class Unavailable extends BillingError { static readonly code = "unavailable"; }

type ErrorClass = (new (message: string, init?: BillingErrorInit) => BillingError) & { code: string };

const CLASSES: ReadonlyMap<string, ErrorClass> = new Map(
  [
    ValidationError, Unauthorized, Forbidden, NotFound, PriceNotFound, InsufficientBalance, ReservationExceeded,
    BudgetExceeded, WalletBlocked, IdempotencyConflict, ReservationClosed, PeriodNotClosed, PeriodNotStarted,
    ReservationExpired, QuoteExpired, RefundExceeded, PayloadTooLarge, InvalidSignature, RateLimited, InternalError,
    Unavailable, ConcurrencyLimit,
  ].map((cls) => [cls.code, cls as ErrorClass]),
);

// the code to assume when an answer has no error envelope (e.g. a proxy's own 502 page)
const CODE_BY_STATUS: Record<number, string> = {
  400: "validation_error", 401: "unauthorized", 403: "forbidden", 404: "not_found", 409: "idempotency_conflict",
  413: "payload_too_large", 429: "rate_limited", 500: "internal_error", 502: "unavailable", 503: "unavailable",
  504: "unavailable",
};

/** The error for an error answer: by the envelope's code, else by the HTTP status. */
export function errorFor(status: number, body: unknown, init: BillingErrorInit = {}): BillingError {
  const envelope = (body as { error?: { code?: unknown; message?: unknown; details?: unknown } } | null)?.error;
  let code: string;
  let message: string;
  let details: Record<string, unknown> = {};
  if (envelope && typeof envelope.code === "string") {
    code = envelope.code;
    message = typeof envelope.message === "string" ? envelope.message : code;
    if (envelope.details && typeof envelope.details === "object") details = envelope.details as Record<string, unknown>;
  } else {
    code = CODE_BY_STATUS[status] ?? `http_${status}`;
    message = `HTTP ${status} without an error body`;
  }
  const cls = CLASSES.get(code) ?? BillingError;
  return new cls(message, { ...init, code, details, status });
}

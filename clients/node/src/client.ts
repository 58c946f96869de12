/** `BillingClient`: the LAD Billing client, and `call()`, the hold → extend → settle lifecycle of a call. */
import { randomUUID } from "node:crypto";

import { BillingError, ConcurrencyLimit, errorFor, NetworkError, ReservationClosed, ReservationExpired } from "./errors.js";
import type {
  BatchResult, CallStatement, Charge, Credit, Entitlement, Invoice, InvoicePage, Price, Quote, Reservation, ReservationPage, Task,
  SubAccount, TransactionPage, UsageEventDetail, UsagePage, Wallet,
} from "./models.js";
import * as m from "./models.js";
import { Attempts, retryableStatus, retryAfterSeconds, type RetryOptions, sleep } from "./retry.js";
import type { Spec } from "./spec.js";
import { VERSION } from "./version.js";

/** A decimal amount or quantity: a decimal string ("0.75") or a number (sent as JSON prints it). */
export type DecimalInput = string | number;

export interface UsageItem {
  category: string;
  provider: string;
  model: string;
  unit: string;
  quantity: DecimalInput;
}

export interface ChargeInput {
  featureKey: string;
  items: UsageItem[];
  /** Generated when absent; the same on every retry. */
  idempotencyKey?: string;
  externalReferenceId?: string;
  /** Settle this hold: the actual cost is debited, the rest released. */
  reservationId?: string;
  /** Price at this binding quote's unit prices. */
  quoteId?: string;
  metadata?: Record<string, unknown>;
  /** For a billing.admin token acting for a tenant (or the token's own tenant). */
  tenantId?: string;
  /** When the usage happened, for a record sent late (ISO 8601 or a Date): priced and budgeted then. */
  occurredAt?: string | Date;
}

export interface ChargeOptions {
  /** true (default): wait for the outcome (the server's 10 s); a number: wait that many seconds; false: answer at once. */
  wait?: boolean | number;
}

/** The seed's `createAndChargeUsageEvent` arguments: those of `charge`, plus the seed's `userId`. */
export interface UsageEventInput extends ChargeInput {
  /** The service records the token's subject as the user; a userId given here is kept in metadata. */
  userId?: string;
}

export interface ReserveInput {
  featureKey: string;
  amount?: DecimalInput;
  items?: UsageItem[];
  quoteId?: string;
  ttlSeconds?: number;
  idempotencyKey?: string;
  externalReferenceId?: string;
}

export interface CallOptions {
  /** Hold this amount, or `items`' cost. */
  hold?: DecimalInput;
  items?: UsageItem[];
  quoteId?: string;
  ttlSeconds?: number;
  externalReferenceId?: string;
  metadata?: Record<string, unknown>;
  /** The call's key: each step's key derives from it (generated when absent). */
  idempotencyKey?: string;
}

export type TokenSource = string | (() => string | Promise<string>);

export interface BillingClientOptions extends RetryOptions {
  baseUrl: string;
  /** A bearer token, or a function returning a fresh one (called before every attempt). */
  token: TokenSource;
  /** Per attempt, in seconds (default 30). */
  timeout?: number;
  /** For a billing.admin token acting for a tenant. */
  tenantId?: string;
  /** Defaults to the global fetch (Node 18+). */
  fetch?: typeof fetch;
}

const API = "/api/billing";
const USER_AGENT = `lad-billing-node/${VERSION} node/${process.versions.node}`;

export function newIdempotencyKey(kind = "req"): string {
  return `lad-node-${kind}-${randomUUID()}`;
}

interface Request {
  method: "GET" | "POST";
  path: string;
  query?: Record<string, string | number | undefined | null>;
  body?: Record<string, unknown>;
  idempotencyKey?: string | null;
  headers?: Record<string, string>;
  /** At least this long per attempt, in seconds (a charge that waits for its outcome). */
  minTimeout?: number;
  /** The caller's own resource (an agency's tree): `tenantId` does not apply. */
  own?: boolean;
}

interface Answer {
  status: number;
  body: any; // eslint-disable-line @typescript-eslint/no-explicit-any
  headers: Headers;
}

/** What the client reads: `spec` at `pointer` of the answer to `method path` with `status`. The
 * contract test checks every one against /openapi.json. */
export interface Read {
  method: string;
  path: string;
  status: number;
  pointer: string[];
  spec: Spec;
}

export const reads: Read[] = [];
function read(method: string, path: string, status: number, pointer: string[], spec: Spec): Read {
  const found = { method, path: API + path, status, pointer, spec };
  reads.push(found);
  return found;
}

const R = {
  // one of the two is present: `price` when all four keys are given, else `prices`
  price: read("GET", "/pricing", 200, ["price"], { ...m.PriceSpec, nullable: true }),
  prices: read("GET", "/pricing", 200, ["prices"], { kind: "array", nullable: true, items: m.PriceSpec }),
  quote: read("POST", "/quote", 200, ["quote"], m.QuoteSpec),
  wallet: read("GET", "/wallet", 200, ["wallet"], m.WalletSpec),
  topUp: read("POST", "/topup", 200, [], m.CreditSpec),
  charged: read("POST", "/charge", 200, [], m.ChargedSpec),
  accepted: read("POST", "/charge", 202, [], m.ChargeAcceptedSpec),
  charges: read("POST", "/charges", 202, ["results"], { kind: "array", nullable: false, items: m.BatchResultSpec }),
  task: read("GET", "/tasks/{task_id}", 200, ["task"], m.TaskSpec),
  entitlement: read("GET", "/entitlement", 200, ["entitlement"], m.EntitlementSpec),
  reserve: read("POST", "/reservations", 200, ["reservation"], m.ReservationSpec),
  extend: read("POST", "/reservations/{reservation_id}/extend", 200, ["reservation"], m.ReservationSpec),
  release: read("POST", "/reservations/{reservation_id}/release", 200, ["reservation"], m.ReservationSpec),
  reservation: read("GET", "/reservations/{reservation_id}", 200, ["reservation"], m.ReservationSpec),
  reservations: read("GET", "/reservations", 200, [], m.ReservationPageSpec),
  usage: read("GET", "/usage", 200, ["usage"], m.UsagePageSpec),
  usageEvent: read("GET", "/usage/{usage_event_id}", 200, ["usageEvent"], m.UsageEventDetailSpec),
  call: read("GET", "/calls/{external_reference_id}", 200, ["call"], m.CallStatementSpec),
  transactions: read("GET", "/transactions", 200, [], m.TransactionPageSpec),
  invoices: read("GET", "/invoices", 200, [], m.InvoicePageSpec),
  invoice: read("GET", "/invoices/{invoice_id}", 200, ["invoice"], m.InvoiceSpec),
  subAccounts: read("GET", "/sub-accounts", 200, ["subAccounts"], { kind: "array", nullable: false, items: m.SubAccountSpec }),
  subAccount: read("GET", "/sub-accounts/{tenant_id}", 200, ["subAccount"], m.SubAccountSpec),
  createSubAccount: read("POST", "/sub-accounts", 201, ["subAccount"], m.SubAccountSpec),
  topUpSubAccount: read("POST", "/sub-accounts/{tenant_id}/topups", 200, [], m.CreditSpec),
  error: read("POST", "/charge", 402, ["error"], m.ErrorInfoSpec),
};

function at(answer: Answer, found: Read): any { // eslint-disable-line @typescript-eslint/no-explicit-any
  return found.pointer.reduce((value, key) => value?.[key], answer.body);
}

function chargeBody(input: ChargeInput, idempotencyKey: string): Record<string, unknown> {
  return compact({
    featureKey: input.featureKey, items: input.items, idempotencyKey, externalReferenceId: input.externalReferenceId,
    reservationId: input.reservationId, quoteId: input.quoteId, metadata: input.metadata, tenantId: input.tenantId,
    occurredAt: input.occurredAt instanceof Date ? input.occurredAt.toISOString() : input.occurredAt,
  });
}

function compact(fields: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(Object.entries(fields).filter(([, value]) => value !== undefined && value !== null));
}

/**
 * A client of LAD Billing. Mutating requests always carry an idempotency key (generated when none is
 * given, the same on every retry); network errors, 408, 429 (after its Retry-After) and 5xx are retried
 * with exponential backoff and full jitter, at most `maxRetries` times within `retryDeadline` seconds.
 */
export class BillingClient {
  readonly baseUrl: string;
  private readonly options: BillingClientOptions;
  private readonly fetchImpl: typeof fetch;

  constructor(options: BillingClientOptions) {
    this.options = options;
    this.baseUrl = options.baseUrl.replace(/\/+$/, "");
    this.fetchImpl = options.fetch ?? globalThis.fetch;
    if (typeof this.fetchImpl !== "function") throw new Error("@lad/billing-client needs fetch (Node 18+)");
  }

  private async token(): Promise<string> {
    const source = this.options.token;
    return typeof source === "function" ? await source() : source;
  }

  private async send(request: Request): Promise<Answer> {
    const attempts = new Attempts(this.options);
    const query = { ...request.query };
    let body = request.body;
    if (this.options.tenantId && !request.own) {
      if (request.method === "GET") query.tenantId = this.options.tenantId;
      else body = { tenantId: this.options.tenantId, ...body };
    }
    const search = new URLSearchParams();
    for (const [key, value] of Object.entries(query)) if (value !== undefined && value !== null) search.set(key, String(value));
    const url = `${this.baseUrl}${API}${request.path}${search.toString() ? `?${search}` : ""}`;
    const content = body === undefined ? undefined : JSON.stringify(body);
    const timeoutMs = Math.max(this.options.timeout ?? 30, request.minTimeout ?? 0) * 1000;
    for (;;) {
      const headers: Record<string, string> = {
        Authorization: `Bearer ${await this.token()}`, "User-Agent": USER_AGENT, Accept: "application/json",
        ...(content !== undefined ? { "Content-Type": "application/json" } : {}),
        ...(request.idempotencyKey ? { "Idempotency-Key": request.idempotencyKey } : {}),
        ...request.headers,
      };
      let error: BillingError;
      try {
        const response = await this.fetchImpl(url, {
          method: request.method, headers, body: content, signal: AbortSignal.timeout(attempts.attemptTimeout(timeoutMs)),
        });
        const text = await response.text();
        let parsed: unknown = null;
        try {
          parsed = text ? JSON.parse(text) : null;
        } catch {
          parsed = null;
        }
        if (response.status < 400) return { status: response.status, body: parsed, headers: response.headers };
        error = errorFor(response.status, parsed, {
          requestId: response.headers.get("x-request-id"), idempotencyKey: request.idempotencyKey ?? null,
          retryAfter: retryAfterSeconds(response.headers.get("retry-after")),
        });
        // a call refused for want of a slot is the caller's to decide, not to retry
        if (!retryableStatus(response.status) || error instanceof ConcurrencyLimit) throw error;
      } catch (thrown) {
        if (thrown instanceof BillingError) throw thrown;
        // fetch rejects with a TypeError on network failures, and with a TimeoutError on our own timeout
        const reason = thrown as Error;
        error = new NetworkError(`${reason.name}: ${reason.message}`, {
          idempotencyKey: request.idempotencyKey ?? null, cause: thrown,
        });
      }
      await sleep(attempts.waitBeforeNext(error));
    }
  }

  // --- pricing and quotes ---------------------------------------------------------------------------

  async price(key: { category: string; provider: string; model: string; unit: string; at?: string }): Promise<Price> {
    return at(await this.send({ method: "GET", path: "/pricing", query: { ...key } }), R.price);
  }

  async prices(filters: { category?: string; provider?: string; model?: string; unit?: string; at?: string } = {}):
    Promise<Price[]> {
    return at(await this.send({ method: "GET", path: "/pricing", query: { ...filters } }), R.prices);
  }

  /** Price items; the quote binds for charges and holds naming `quoteId` until `expiresAt`. */
  async quote(items: UsageItem[], options: { ttlSeconds?: number } = {}): Promise<Quote> {
    const body = compact({ items, ttlSeconds: options.ttlSeconds });
    return at(await this.send({ method: "POST", path: "/quote", body, idempotencyKey: newIdempotencyKey("quote") }),
      R.quote);
  }

  // --- wallet and credits ---------------------------------------------------------------------------

  async wallet(): Promise<Wallet> {
    return at(await this.send({ method: "GET", path: "/wallet" }), R.wallet);
  }

  async entitlement(featureKey: string, estimatedCost: DecimalInput = "0"): Promise<Entitlement> {
    const answer = await this.send({ method: "GET", path: "/entitlement", query: { featureKey, estimatedCost } });
    return at(answer, R.entitlement);
  }

  /** billing.admin: add a credit grant. */
  async topUp(input: { amount: DecimalInput; idempotencyKey?: string; description?: string;
    kind?: "paid" | "promotional"; expiresAt?: string; priority?: number }): Promise<Credit> {
    const idempotencyKey = input.idempotencyKey ?? newIdempotencyKey("topup");
    const answer = await this.send({ method: "POST", path: "/topup", body: compact({ ...input, idempotencyKey }),
      idempotencyKey });
    return at(answer, R.topUp);
  }

  // --- charging -------------------------------------------------------------------------------------

  /** Record and charge usage. A refusal (InsufficientBalance, BudgetExceeded, …) is thrown. */
  async charge(input: ChargeInput, options: ChargeOptions = {}): Promise<Charge> {
    const idempotencyKey = input.idempotencyKey ?? newIdempotencyKey("charge");
    const wait = options.wait ?? true;
    const seconds = wait === true ? 10 : wait === false ? 0 : wait;
    const answer = await this.send({
      method: "POST", path: "/charge", body: chargeBody(input, idempotencyKey), idempotencyKey,
      query: typeof wait === "number" ? { wait } : {}, headers: wait === false ? { Prefer: "respond-async" } : {},
      minTimeout: seconds + 10,
    });
    const replayed = answer.headers.get("idempotent-replayed") === "true";
    if (answer.status === 202) {
      const pending = at(answer, R.accepted);
      return { taskId: pending.taskId, usageEvent: pending.usageEvent, transaction: null, replayed };
    }
    const charged = at(answer, R.charged);
    return { taskId: charged.taskId, usageEvent: charged.usageEvent, transaction: charged.transaction, replayed };
  }

  /** The seed's integration call: `charge` with the seed's arguments (`userId` is kept in metadata). */
  async createAndChargeUsageEvent(input: UsageEventInput, options: ChargeOptions = {}): Promise<Charge> {
    const { userId, ...charge } = input;
    const metadata = userId === undefined || input.metadata?.userId !== undefined
      ? input.metadata : { ...input.metadata, userId };
    return this.charge({ ...charge, metadata }, options);
  }

  /** Up to 1,000 charges in one request, each with its own outcome and its own key (kept across retries). */
  async charges(events: ChargeInput[]): Promise<BatchResult[]> {
    const keys = events.map((event) => event.idempotencyKey ?? newIdempotencyKey("charge"));
    const body = { events: events.map((event, index) => chargeBody(event, keys[index])) };
    const results = at(await this.send({ method: "POST", path: "/charges", body }), R.charges) as BatchResult[];
    return results.map((result) => ({ ...result, idempotencyKey: keys[result.index] }));
  }

  async task(taskId: string): Promise<Task> {
    return at(await this.send({ method: "GET", path: `/tasks/${encodeURIComponent(taskId)}` }), R.task);
  }

  // --- holds ----------------------------------------------------------------------------------------

  async reserve(input: ReserveInput): Promise<Reservation> {
    const idempotencyKey = input.idempotencyKey ?? newIdempotencyKey("hold");
    const answer = await this.send({ method: "POST", path: "/reservations", body: compact({ ...input, idempotencyKey }),
      idempotencyKey });
    return at(answer, R.reserve);
  }

  async extendReservation(reservationId: string, input: { amount?: DecimalInput; ttlSeconds?: number;
    idempotencyKey?: string }): Promise<Reservation> {
    const idempotencyKey = input.idempotencyKey ?? newIdempotencyKey("extend");
    const answer = await this.send({ method: "POST", path: `/reservations/${encodeURIComponent(reservationId)}/extend`,
      body: compact({ ...input, idempotencyKey }), idempotencyKey });
    return at(answer, R.extend);
  }

  async releaseReservation(reservationId: string, input: { idempotencyKey?: string } = {}): Promise<Reservation> {
    const idempotencyKey = input.idempotencyKey ?? newIdempotencyKey("release");
    const answer = await this.send({ method: "POST", path: `/reservations/${encodeURIComponent(reservationId)}/release`,
      body: { idempotencyKey }, idempotencyKey });
    return at(answer, R.release);
  }

  async reservation(reservationId: string): Promise<Reservation> {
    return at(await this.send({ method: "GET", path: `/reservations/${encodeURIComponent(reservationId)}` }),
      R.reservation);
  }

  async reservations(query: { status?: Reservation["status"]; limit?: number; cursor?: string } = {}):
    Promise<ReservationPage> {
    return at(await this.send({ method: "GET", path: "/reservations", query }), R.reservations);
  }

  /** Calls by their external reference: `await client.calls.get("call-1")` is one call's statement (its
   * holds, extensions, charges, items by component and ledger entries); NotFound for another tenant's. */
  readonly calls = {
    get: async (externalReferenceId: string): Promise<CallStatement> =>
      at(await this.send({ method: "GET", path: `/calls/${encodeURIComponent(externalReferenceId)}` }), R.call),
  };

  /**
   * One call's hold: holds `hold` (or what `items` cost), runs `fn(call)` — inside, `call.extend(...)`
   * and `call.settle(items)` — and releases the hold when `fn` returns without settling or throws.
   */
  async call<T>(featureKey: string, options: CallOptions, fn: (call: Call) => Promise<T>): Promise<T> {
    const call = new Call(this, featureKey, options);
    await call.hold();
    let result: T;
    try {
      result = await fn(call);
    } catch (error) {
      await call.releaseIfUnsettled().catch(() => undefined); // the call's own error matters more
      throw error;
    }
    await call.releaseIfUnsettled();
    return result;
  }

  // --- history --------------------------------------------------------------------------------------

  async usage(query: { from?: string; to?: string; featureKey?: string; status?: string; limit?: number;
    cursor?: string } = {}): Promise<UsagePage> {
    return at(await this.send({ method: "GET", path: "/usage", query }), R.usage);
  }

  async usageEvent(usageEventId: string): Promise<UsageEventDetail> {
    return at(await this.send({ method: "GET", path: `/usage/${encodeURIComponent(usageEventId)}` }), R.usageEvent);
  }

  async transactions(query: { from?: string; to?: string; type?: string; limit?: number; cursor?: string } = {}):
    Promise<TransactionPage> {
    return at(await this.send({ method: "GET", path: "/transactions", query }), R.transactions);
  }

  async invoices(query: { from?: string; to?: string; limit?: number; cursor?: string } = {}): Promise<InvoicePage> {
    return at(await this.send({ method: "GET", path: "/invoices", query }), R.invoices);
  }

  async invoice(invoiceId: string): Promise<Invoice> {
    return at(await this.send({ method: "GET", path: `/invoices/${encodeURIComponent(invoiceId)}` }), R.invoice);
  }

  // --- an agency's sub-accounts ---------------------------------------------------------------------
  // The agency's own tree, whatever `tenantId` the client acts for. To act for one of its sub-accounts
  // (wallet, usage, invoices…), make a client with `tenantId` set to the sub-account's id.

  async subAccounts(): Promise<SubAccount[]> {
    return at(await this.send({ method: "GET", path: "/sub-accounts", own: true }), R.subAccounts);
  }

  async subAccount(tenantId: string): Promise<SubAccount> {
    return at(await this.send({ method: "GET", path: `/sub-accounts/${encodeURIComponent(tenantId)}`, own: true }),
      R.subAccount);
  }

  /** billing.manage of an agency: the sub-account `<agencyId>:<name>`. */
  async createSubAccount(input: { name: string; funding?: "prepaid" | "agency"; spendCap?: DecimalInput }):
    Promise<SubAccount> {
    const body = compact({ name: input.name, funding: input.funding ?? "prepaid", spendCap: input.spendCap });
    return at(await this.send({ method: "POST", path: "/sub-accounts", body, own: true,
      idempotencyKey: newIdempotencyKey("sub-account") }), R.createSubAccount);
  }

  /** billing.manage of an agency: credit one of its prepaid sub-accounts (its own wallet does not move). */
  async topUpSubAccount(tenantId: string, input: { amount: DecimalInput; idempotencyKey?: string; description?: string }):
    Promise<Credit> {
    const idempotencyKey = input.idempotencyKey ?? newIdempotencyKey("topup");
    const answer = await this.send({ method: "POST", path: `/sub-accounts/${encodeURIComponent(tenantId)}/topups`,
      body: compact({ ...input, idempotencyKey }), idempotencyKey, own: true });
    return at(answer, R.topUpSubAccount);
  }
}

/** One call's hold (see `BillingClient.call`). Each step's idempotency key derives from the call's key. */
export class Call {
  readonly featureKey: string;
  readonly key: string;
  reservation: Reservation | null = null;
  charge: Charge | null = null;
  private released = false;
  // a settlement whose answer never came may still settle the hold: then it must not be released
  private settleUnknown = false;
  private extensions = 0;
  private settlements = 0;

  constructor(private readonly client: BillingClient, featureKey: string, private readonly options: CallOptions) {
    this.featureKey = featureKey;
    this.key = options.idempotencyKey ?? newIdempotencyKey("call");
  }

  private get reservationId(): string {
    if (!this.reservation) throw new Error("the call holds nothing");
    return this.reservation.id;
  }

  async hold(): Promise<Reservation> {
    const o = this.options;
    this.reservation = await this.client.reserve({
      featureKey: this.featureKey, amount: o.hold, items: o.items, quoteId: o.quoteId, ttlSeconds: o.ttlSeconds,
      externalReferenceId: o.externalReferenceId, idempotencyKey: `${this.key}:hold`,
    });
    return this.reservation;
  }

  /** Hold `amount` more and/or keep the hold `ttlSeconds` from now. */
  async extend(input: { amount?: DecimalInput; ttlSeconds?: number }): Promise<Reservation> {
    this.extensions += 1;
    this.reservation = await this.client.extendReservation(this.reservationId, {
      ...input, idempotencyKey: `${this.key}:extend:${this.extensions}`,
    });
    return this.reservation;
  }

  /** Charge what the call used against the hold; the rest of the hold is released. */
  async settle(items: UsageItem[], options: { metadata?: Record<string, unknown> } & ChargeOptions = {}):
    Promise<Charge> {
    if (this.charge) throw new Error("this call is settled already");
    // a refused settlement replays its refusal under its key, so another try needs a new one
    this.settlements += 1;
    try {
      this.charge = await this.client.charge({
        featureKey: this.featureKey, items, reservationId: this.reservationId, quoteId: this.options.quoteId,
        externalReferenceId: this.options.externalReferenceId, metadata: options.metadata ?? this.options.metadata,
        idempotencyKey: `${this.key}:settle:${this.settlements}`,
      }, options);
    } catch (error) {
      if (error instanceof NetworkError) this.settleUnknown = true;
      throw error;
    }
    return this.charge;
  }

  async release(): Promise<Reservation | null> {
    try {
      this.reservation = await this.client.releaseReservation(this.reservationId, {
        idempotencyKey: `${this.key}:release`,
      });
    } catch (error) {
      // already closed: nothing is left to give back
      if (!(error instanceof ReservationClosed || error instanceof ReservationExpired)) throw error;
    }
    this.released = true;
    return this.reservation;
  }

  async releaseIfUnsettled(): Promise<void> {
    if (this.reservation && !this.charge && !this.released && !this.settleUnknown) await this.release();
  }
}

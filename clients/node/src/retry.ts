/** When to try a request again, and how long to wait first. */
import { BillingError } from "./errors.js";

/** No answer, or an answer that says "later": 408, 429 and 5xx. Every other 4xx is final. */
export function retryableStatus(status: number): boolean {
  return status === 408 || status === 429 || status >= 500;
}

/** Retry-After as seconds (delta-seconds or an HTTP date). */
export function retryAfterSeconds(value: string | null): number | null {
  if (!value) return null;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return Math.max(0, seconds);
  const at = Date.parse(value);
  return Number.isNaN(at) ? null : Math.max(0, (at - Date.now()) / 1000);
}

export interface RetryOptions {
  /** More attempts after the first (default 3). */
  maxRetries?: number;
  /** Every attempt starts within this many seconds of the first (default 60). */
  retryDeadline?: number;
  /** Backoff base in seconds (default 0.5): a random wait in [0, min(cap, base × 2^attempt)]. */
  backoffBase?: number;
  /** Backoff cap in seconds (default 8). */
  backoffCap?: number;
}

/** The retry loop's bookkeeping for one request: exponential backoff with full jitter, or the server's
 * Retry-After; bounded by maxRetries and the deadline. */
export class Attempts {
  private attempt = 0;
  private readonly started = Date.now();
  private readonly maxRetries: number;
  private readonly deadlineMs: number;
  private readonly base: number;
  private readonly cap: number;

  constructor(options: RetryOptions) {
    this.maxRetries = options.maxRetries ?? 3;
    this.deadlineMs = (options.retryDeadline ?? 60) * 1000;
    this.base = options.backoffBase ?? 0.5;
    this.cap = options.backoffCap ?? 8;
  }

  /** Milliseconds this attempt may take: at most `timeoutMs`, never past the deadline. */
  attemptTimeout(timeoutMs: number): number {
    return Math.max(100, Math.min(timeoutMs, this.started + this.deadlineMs - Date.now()));
  }

  /** Milliseconds to wait before the next attempt; throws `error` when no attempt is left. */
  waitBeforeNext(error: BillingError): number {
    const delay = error.retryAfter !== null
      ? error.retryAfter * 1000
      : Math.random() * Math.min(this.cap, this.base * 2 ** this.attempt) * 1000;
    this.attempt += 1;
    if (this.attempt > this.maxRetries || Date.now() + delay >= this.started + this.deadlineMs) throw error;
    return delay;
  }
}

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

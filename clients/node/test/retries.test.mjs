// Retries through the fault proxy (tests/fault_proxy.py): dropped connections, 503 and 429 before the
// requests pass; the charge happens once.
import assert from "node:assert/strict";
import { test } from "node:test";

import { BillingClient, RateLimited, Unavailable, ValidationError, VERSION } from "@lad/billing-client";

import { baseUrl, makeToken, newTenant, planFaults, proxyLog, proxyUrl, settled, stt } from "./support.mjs";

test("a charge retried through dropped connections, 503 and 429 is charged once", async () => {
  const tenant = newTenant();
  await new BillingClient({ baseUrl, token: makeToken(tenant, "billing.admin") }).topUp({ amount: "10" });
  const client = new BillingClient({ baseUrl: proxyUrl, token: makeToken(tenant, "billing.charge", "billing.view"),
    backoffBase: 0.05, maxRetries: 5 });

  await planFaults({ path: "/charge", action: "forward_then_drop" }, { path: "/charge", action: "503" },
    { path: "/charge", action: "forward_then_503" }, { path: "/charge", action: "429" });
  const started = Date.now();
  const charge = await client.charge({ featureKey: "voice-agent", items: stt(10000) });
  assert.ok(Date.now() - started >= 1000, "the 429's Retry-After was honoured");
  const attempts = await proxyLog("/charge");
  assert.deepEqual(attempts.map((a) => a.action), ["forward_then_drop", "503", "forward_then_503", "429", "pass"]);
  assert.equal(new Set(attempts.map((a) => a.idempotencyKey)).size, 1);
  assert.match(attempts[0].idempotencyKey, /^lad-node-charge-/);
  assert.ok(attempts.every((a) => a.userAgent.startsWith(`lad-billing-node/${VERSION} node/`)));
  assert.equal(charge.replayed, true);
  assert.equal(charge.usageEvent.status, "charged");
  assert.equal((await client.usage()).summary.totalEvents, 1);
  assert.equal((await client.wallet()).currentBalance, "9");

  // a batch whose answer was lost: every event keeps its key, so the retry replays them
  await planFaults({ path: "/charges", action: "forward_then_drop" }, { path: "/charges", action: "drop" });
  const results = await client.charges([1, 2, 3].map(() => ({ featureKey: "campaigns", items: stt(10000) })));
  assert.deepEqual(results.map((r) => r.status), ["replayed", "replayed", "replayed"]);
  for (const result of results) await settled(client, result.taskId);
  assert.equal((await client.usage()).summary.totalEvents, 4);
  assert.equal((await client.wallet()).currentBalance, "6");

  // other 4xx are never retried
  await planFaults();
  await assert.rejects(client.charge({ featureKey: "voice-agent", items: stt("-1") }), ValidationError);
  assert.equal((await proxyLog("/charge")).length, 1);
});

test("retries are bounded by maxRetries and the deadline", async () => {
  const token = makeToken(newTenant(), "billing.view");
  const few = new BillingClient({ baseUrl: proxyUrl, token, backoffBase: 0.01, maxRetries: 2 });
  await planFaults(...Array(5).fill({ path: "/wallet", action: "503" }));
  await assert.rejects(few.wallet(), Unavailable);
  assert.equal((await proxyLog("/wallet")).length, 3);

  const short = new BillingClient({ baseUrl: proxyUrl, token, maxRetries: 10, retryDeadline: 0.5 });
  await planFaults(...Array(5).fill({ path: "/wallet", action: "429" }));
  await assert.rejects(short.wallet(), (error) => error instanceof RateLimited && error.retryAfter === 1);
  assert.equal((await proxyLog("/wallet")).length, 1);
});

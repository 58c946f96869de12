// Every method of the ESM build once against the live stack, call() settling, extending and releasing.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { randomUUID } from "node:crypto";
import { test } from "node:test";

import {
  BillingClient, BillingError, ConcurrencyLimit, Forbidden, InsufficientBalance, NotFound, ReservationExceeded,
  ValidationError, VERSION,
} from "@lad/billing-client";

import { baseUrl, makeToken, newTenant, patchWallet, settled, stt } from "./support.mjs";

function clients(tenant = newTenant()) {
  return {
    tenant,
    // the token as a function: a fresh one for every attempt
    billing: new BillingClient({ baseUrl, token: () => makeToken(tenant, "billing.charge", "billing.view"), backoffBase: 0.05 }),
    admin: new BillingClient({ baseUrl, token: makeToken(tenant, "billing.admin"), backoffBase: 0.05 }),
  };
}

test("the version in the User-Agent is the package's", () => {
  const pkg = JSON.parse(readFileSync(new URL("../package.json", import.meta.url)));
  assert.equal(VERSION, pkg.version);
});

test("every method once", async () => {
  const { tenant, billing, admin } = clients();
  const credit = await admin.topUp({ amount: "10", description: "node test", idempotencyKey: `topup-${randomUUID()}` });
  assert.equal(credit.transaction.type, "topup");
  assert.equal(credit.transaction.amount, "10");
  assert.equal(credit.grant?.remaining, "10");

  const wallet = await billing.wallet();
  assert.deepEqual([wallet.currentBalance, wallet.reservedBalance, wallet.availableBalance], ["10", "0", "10"]);
  assert.equal(wallet.tenantId, tenant);

  const price = await billing.price({ category: "stt", provider: "openai", model: "whisper-1", unit: "second" });
  assert.equal(price.unitPrice, "0.0001");
  assert.ok((await billing.prices({ category: "llm_prompt" })).some((p) => p.model === "gpt-4"));

  const quote = await billing.quote([...stt(60), { category: "telephony", provider: "twilio", model: "voice", unit: "minute", quantity: "1" }]);
  assert.equal(quote.totalCost, "0.019");
  assert.equal(quote.items[0].totalCost, "0.006");

  const entitlement = await billing.entitlement("voice-agent", "0.40");
  assert.deepEqual([entitlement.allowed, entitlement.availableBalance, entitlement.reason], [true, "10", null]);

  const charge = await billing.charge({ featureKey: "voice-agent", items: stt(10000), externalReferenceId: "call-1",
    quoteId: quote.quoteId, metadata: { callId: "call-1" } });
  assert.equal(charge.usageEvent.status, "charged");
  assert.equal(charge.usageEvent.totalCost, "1");
  assert.equal(charge.transaction?.amount, "-1");
  assert.equal(charge.replayed, false);

  // the seed's integration call, with the seed's arguments
  const seed = await billing.createAndChargeUsageEvent({
    tenantId: tenant, userId: "user-7", featureKey: "voice-agent", externalReferenceId: "call_abc123",
    idempotencyKey: `call_${randomUUID()}`, items: stt(45.5), metadata: { callId: "call_abc123", duration: 45 },
  });
  assert.equal(seed.usageEvent.totalCost, "0.00455");
  const detail = await billing.usageEvent(seed.usageEvent.id);
  assert.equal(detail.metadata.userId, "user-7");
  assert.equal(detail.items[0].quantity, "45.5");

  const pending = await billing.charge({ featureKey: "campaigns", items: stt(5000) }, { wait: false });
  assert.equal(pending.usageEvent.status, "pending");
  assert.equal(pending.transaction, null);
  const task = await settled(billing, pending.taskId);
  assert.equal(task.state, "charged");
  assert.equal(task.transaction?.amount, "-0.5");

  const results = await billing.charges([
    { featureKey: "campaigns", items: stt(10000) },
    { featureKey: "campaigns", items: stt(-1) },
  ]);
  assert.deepEqual(results.map((r) => r.status), ["accepted", "error"]);
  assert.equal(results[1].error?.code, "validation_error");
  assert.ok(results.every((r) => r.idempotencyKey));
  await settled(billing, results[0].taskId);

  let hold = await billing.reserve({ featureKey: "voice-agent", amount: "2", ttlSeconds: 600 });
  assert.equal(hold.status, "active");
  hold = await billing.extendReservation(hold.id, { amount: "0.5", ttlSeconds: 900 });
  assert.equal(hold.amount, "2.5");
  assert.equal((await billing.reservation(hold.id)).id, hold.id);
  assert.deepEqual((await billing.reservations({ status: "active" })).reservations.map((r) => r.id), [hold.id]);
  assert.equal((await billing.releaseReservation(hold.id)).status, "released");

  const usage = await billing.usage({ featureKey: "voice-agent", limit: 1 });
  assert.equal(usage.summary.totalEvents, 2);
  assert.equal(usage.summary.byFeature["voice-agent"].cost, "1.00455");
  assert.ok(usage.nextCursor);
  const debits = await billing.transactions({ type: "debit" });
  assert.equal(debits.transactions.length, 4);
  assert.deepEqual((await billing.invoices()).invoices, []);
  await assert.rejects(billing.invoice(randomUUID()), NotFound);
  assert.equal((await billing.wallet()).currentBalance, "7.49545");
});

test("errors are typed", async () => {
  const { billing, admin } = clients();
  await admin.topUp({ amount: "1" });
  await assert.rejects(billing.charge({ featureKey: "voice-agent", items: stt(20000) }), (error) => {
    assert.ok(error instanceof InsufficientBalance && error instanceof BillingError);
    assert.equal(error.status, 402);
    assert.equal(error.code, "insufficient_balance");
    assert.ok(error.details.usageEventId && error.idempotencyKey);
    return true;
  });
  await assert.rejects(billing.charge({ featureKey: "voice-agent", items: stt("-1") }), (error) => {
    assert.ok(error instanceof ValidationError);
    assert.match(String(error.details.field), /^items\[0\]\.quantity/);
    return true;
  });
  await assert.rejects(billing.topUp({ amount: "5" }), Forbidden);
});

test("call() settles the hold with the call's items", async () => {
  const { billing, admin } = clients();
  await admin.topUp({ amount: "10" });
  let holdId;
  const result = await billing.call("voice-agent", { hold: "2.50", externalReferenceId: "call-42" }, async (call) => {
    holdId = call.reservation.id;
    assert.equal((await billing.wallet()).availableBalance, "7.5");
    await call.settle(stt(12000));
    return "done";
  });
  assert.equal(result, "done");
  assert.equal((await billing.reservation(holdId)).status, "settled");
  const wallet = await billing.wallet();
  assert.deepEqual([wallet.currentBalance, wallet.reservedBalance], ["8.8", "0"]);
});

test("call() extends, then settles above the first hold", async () => {
  const { billing, admin } = clients();
  await admin.topUp({ amount: "3" });
  await billing.call("voice-agent", { items: stt(10000), ttlSeconds: 60 }, async (call) => {
    assert.equal(call.reservation.amount, "1");
    const extended = await call.extend({ amount: "1", ttlSeconds: 900 });
    assert.equal(extended.amount, "2");
    assert.equal((await billing.wallet()).availableBalance, "1");
    const charge = await call.settle(stt(18000));
    assert.equal(charge.usageEvent.totalCost, "1.8");
  });
  assert.equal((await billing.wallet()).currentBalance, "1.2");
});

test("call() releases the hold when the callback throws or does not settle", async () => {
  const { tenant, billing, admin } = clients();
  await patchWallet(tenant, { settlementPolicy: "strict" }); // a settlement past the balance is refused
  await admin.topUp({ amount: "5" });
  let failed, unused, refused;
  await assert.rejects(billing.call("voice-agent", { hold: "2" }, async (call) => {
    failed = call.reservation.id;
    throw new Error("the call failed");
  }), /the call failed/);
  assert.equal((await billing.reservation(failed)).status, "released");
  await billing.call("voice-agent", { hold: "1" }, async (call) => { unused = call.reservation.id; });
  assert.equal((await billing.reservation(unused)).status, "released");
  await assert.rejects(billing.call("voice-agent", { hold: "1" }, async (call) => {
    refused = call.reservation.id;
    await call.settle(stt(100000));
  }), ReservationExceeded);
  assert.equal((await billing.reservation(refused)).status, "released");
  const wallet = await billing.wallet();
  assert.deepEqual([wallet.currentBalance, wallet.reservedBalance], ["5", "0"]);
});

test("calls.get(ref) is one call's statement; a call past the limit is ConcurrencyLimit, not retried", async () => {
  const { tenant, billing, admin } = clients();
  await admin.topUp({ amount: "5" });
  await patchWallet(tenant, { maxConcurrentCalls: 1 });
  const held = await billing.reserve({ featureKey: "voice-agent", amount: "1", externalReferenceId: "node-call/1" });
  const refused = await billing.reserve({ featureKey: "voice-agent", amount: "1" }).catch((e) => e);
  assert.ok(refused instanceof ConcurrencyLimit, String(refused));
  assert.deepEqual([refused.status, refused.details.limit, refused.details.active], [429, 1, 1]);
  await billing.charge({ featureKey: "voice-agent", items: stt(5000), reservationId: held.id });
  const call = await billing.calls.get("node-call/1");
  assert.equal(call.externalReferenceId, "node-call/1");
  assert.deepEqual([call.totalCost, call.ledgerTotal], ["0.5", "-0.5"]);
  assert.deepEqual(call.holds.map((h) => [h.status, h.burst]), [["settled", false]]);
  assert.equal(call.components[0].category, "stt");
  assert.equal(call.providerCost, undefined);
  await assert.rejects(billing.calls.get("no-such-call"), NotFound);
});

test("an agency client manages its sub-accounts and acts for them", async () => {
  const agencyId = newTenant();
  await patchWallet(agencyId, { reseller: true });
  const manage = makeToken(agencyId, "billing.manage", "billing.view");
  const agency = new BillingClient({ baseUrl, token: manage, backoffBase: 0.05 });
  const sub = await agency.createSubAccount({ name: "client-a" });
  assert.deepEqual([sub.tenantId, sub.funding, sub.spendCap], [`${agencyId}:client-a`, "prepaid", null]);
  const funded = await agency.createSubAccount({ name: "client-b", funding: "agency", spendCap: "12.5" });
  assert.equal(funded.spendCap, "12.5");
  assert.deepEqual((await agency.subAccounts()).map((s) => s.tenantId), [sub.tenantId, funded.tenantId]);
  assert.equal((await agency.subAccount(funded.tenantId)).funding, "agency");
  const credit = await agency.topUpSubAccount(sub.tenantId, { amount: "4", idempotencyKey: "first" });
  const again = await agency.topUpSubAccount(sub.tenantId, { amount: "4", idempotencyKey: "first" });
  assert.equal(credit.transaction.id, again.transaction.id);
  await assert.rejects(agency.topUpSubAccount(funded.tenantId, { amount: "1" }), ValidationError);
  await assert.rejects(agency.subAccount(`o-${randomUUID().slice(0, 8)}:x`), NotFound);

  const acting = new BillingClient({ baseUrl, token: manage, tenantId: sub.tenantId, backoffBase: 0.05 });
  assert.equal((await acting.wallet()).currentBalance, "4");
  assert.equal((await acting.subAccounts()).length, 2, "the tree's methods stay the agency's own");
  const stranger = new BillingClient({ baseUrl, token: manage, tenantId: `o-${randomUUID().slice(0, 8)}`, backoffBase: 0.05 });
  await assert.rejects(stranger.wallet(), NotFound);
});

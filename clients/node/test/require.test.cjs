// The CommonJS build: require() gives the same client, and it talks to the live stack.
const assert = require("node:assert/strict");
const { test } = require("node:test");

const billingClient = require("@lad/billing-client");

test("require() loads the CommonJS build with the whole surface", async () => {
  const { BillingClient, InsufficientBalance, BillingError, reads } = billingClient;
  assert.equal(typeof BillingClient, "function");
  assert.ok(new InsufficientBalance("x") instanceof BillingError);
  assert.ok(reads.length > 10);
  const { baseUrl, makeToken, newTenant } = await import("./support.mjs");
  const tenant = newTenant();
  const client = new BillingClient({ baseUrl, token: makeToken(tenant, "billing.view") });
  const wallet = await client.wallet();
  assert.equal(wallet.currentBalance, "0");
  assert.equal(wallet.tenantId, tenant);
});

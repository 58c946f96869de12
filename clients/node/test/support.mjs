// Shared by the tests: the live stack's URL, tokens minted with the stack's test secret, the fault proxy.
import { createHmac, randomUUID } from "node:crypto";

export const baseUrl = process.env.LAD_BILLING_URL;
export const proxyUrl = process.env.LAD_PROXY_URL;
const secret = process.env.LAD_TEST_JWT_SECRET;
if (!baseUrl || !secret) throw new Error("run these tests from tests/test_client_node.py (LAD_BILLING_URL, LAD_TEST_JWT_SECRET)");

const b64 = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");

/** An HS256 JWT with the contract's claims. */
export function makeToken(tenantId, ...capabilities) {
  const now = Math.floor(Date.now() / 1000);
  const unsigned = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ sub: "node-test", tenantId, capabilities, iat: now, exp: now + 3600 })}`;
  return `${unsigned}.${createHmac("sha256", secret).update(unsigned).digest("base64url")}`;
}

/** PATCH /wallet as the tenant's operator: e.g. its call plan. */
export async function patchWallet(tenantId, body) {
  const response = await fetch(`${baseUrl}/api/billing/wallet`, {
    method: "PATCH", body: JSON.stringify(body),
    headers: { Authorization: `Bearer ${makeToken(tenantId, "billing.admin")}`, "Content-Type": "application/json" },
  });
  if (!response.ok) throw new Error(`PATCH /wallet: ${response.status} ${await response.text()}`);
  return (await response.json()).wallet;
}

export const newTenant = () => `node-${randomUUID().slice(0, 12)}`;

export const stt = (seconds) => [{ category: "stt", provider: "openai", model: "whisper-1", unit: "second", quantity: seconds }];

export async function planFaults(...faults) {
  const response = await fetch(`${proxyUrl}/__proxy/plan`, { method: "POST", body: JSON.stringify({ faults }) });
  if (!response.ok) throw new Error(`proxy plan: ${response.status}`);
}

export async function proxyLog(pathSuffix) {
  const { log } = await (await fetch(`${proxyUrl}/__proxy/log`)).json();
  return log.filter((entry) => entry.path.endsWith(pathSuffix));
}

export async function settled(client, taskId) {
  const deadline = Date.now() + 60_000;
  for (;;) {
    const task = await client.task(taskId);
    if (task.state !== "pending") return task;
    if (Date.now() > deadline) throw new Error(`task ${taskId} still pending`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

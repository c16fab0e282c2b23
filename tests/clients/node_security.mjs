// ioredis and node-redis against a proxy with authentication.
//
// Usage: node node_security.mjs PROXY_PORT
// User "app" has the password "pw-app" and may read "app:*" only; Redis must
// hold app:1 = "one" and other:1 = "secret".
import assert from "node:assert/strict";
import Redis from "ioredis";
import { createClient } from "redis";

const port = Number(process.argv[2]);

const io = new Redis({ host: "127.0.0.1", port, username: "app", password: "pw-app", maxRetriesPerRequest: 1 });
assert.equal(await io.get("app:1"), "one", "ioredis get as app");
await assert.rejects(io.get("other:1"), /NOPERM No permissions to access a key/, "ioredis NOPERM");
await io.quit();

const wrong = new Redis({ host: "127.0.0.1", port, username: "app", password: "nope", maxRetriesPerRequest: 0,
  retryStrategy: () => null, lazyConnect: true });
const errors = [];
wrong.on("error", (e) => errors.push(String(e)));
await wrong.connect().catch((e) => errors.push(String(e)));
await new Promise((resolve) => setTimeout(resolve, 200));
assert.ok(errors.some((e) => /WRONGPASS invalid username-password pair/.test(e)), `ioredis wrong password: ${errors}`);
wrong.disconnect();
console.log("ioredis: ok");

for (const RESP of [2, 3]) {
  const client = createClient({ url: `redis://app:pw-app@127.0.0.1:${port}`, RESP });
  client.on("error", (e) => { console.error("node-redis error", e); process.exit(1); });
  await client.connect();
  assert.equal(await client.get("app:1"), "one", `node-redis get as app (RESP${RESP})`);
  await assert.rejects(client.get("other:1"), /NOPERM/, `node-redis NOPERM (RESP${RESP})`);
  await client.quit();
}
console.log("node-redis: ok");

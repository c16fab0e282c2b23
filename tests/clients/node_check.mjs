// ioredis and node-redis against the proxy, unmodified.
//
// Usage: node node_check.mjs PROXY_PORT
// Redis must hold k = "v" and bin = bytes 0..255, and k = "v2" in database 2;
// "missing" must not exist.
import assert from "node:assert/strict";
import Redis from "ioredis";
import { createClient } from "redis";

const port = Number(process.argv[2]);
const binary = Buffer.from([...Array(256).keys()]);

const io = new Redis({ host: "127.0.0.1", port, maxRetriesPerRequest: 1, enableReadyCheck: true });
assert.equal(await io.get("k"), "v", "ioredis get");
assert.equal(await io.get("missing"), null, "ioredis missing");
assert.deepEqual(await io.getBuffer("bin"), binary, "ioredis binary");
assert.deepEqual(await io.mget("k", "missing"), ["v", null], "ioredis mget");
await assert.rejects(io.set("k", "x"), /unsupported command/, "ioredis set refused");
await io.quit();

// A client configured for another database reads that database, not 0.
const inTwo = new Redis({ host: "127.0.0.1", port, db: 2, maxRetriesPerRequest: 1 });
let selectFailed = null;
inTwo.on("error", (e) => { selectFailed = e; });
assert.equal(await inTwo.get("k"), "v2", "ioredis db: 2");
assert.equal(selectFailed, null, "ioredis SELECT 2");
await inTwo.quit();
console.log("ioredis: ok");

const client = createClient({ url: `redis://127.0.0.1:${port}` });
client.on("error", (e) => { console.error("node-redis error", e); process.exit(1); });
await client.connect();
assert.equal(await client.ping(), "PONG", "node-redis ping");
assert.equal(await client.get("k"), "v", "node-redis get");
assert.equal(await client.get("missing"), null, "node-redis missing");
assert.deepEqual(await client.mGet(["k", "missing"]), ["v", null], "node-redis mget");
await client.quit();

const clientInTwo = createClient({ url: `redis://127.0.0.1:${port}/2` });
clientInTwo.on("error", (e) => { console.error("node-redis error", e); process.exit(1); });
await clientInTwo.connect();
assert.equal(await clientInTwo.get("k"), "v2", "node-redis database 2");
await clientInTwo.quit();
console.log("node-redis: ok");

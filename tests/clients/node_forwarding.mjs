// ioredis (with auto-pipelining) and node-redis doing ordinary work, for
// comparing a proxy in transparent mode with Redis itself: the same script runs
// against both and prints a transcript; the transcripts must be equal.
//
// Usage: node node_forwarding.mjs PORT
import Redis from "ioredis";
import { createClient } from "redis";

const port = Number(process.argv[2]);
const note = (label, value) => console.log(`${label}: ${JSON.stringify(value)}`);

// ioredis, its commands of one tick sent as one pipeline.
const io = new Redis({ port, host: "127.0.0.1", enableAutoPipelining: true, lazyConnect: true });
const ioOther = new Redis({ port, host: "127.0.0.1", lazyConnect: true });
await io.connect();
await ioOther.connect();
note("io set/get", await Promise.all([io.set("io:s", "1"), io.get("io:s"), io.incr("io:s"), io.get("io:s")]));
note("io hash", await Promise.all([
  io.hset("io:h", "f", "v"), io.hget("io:h", "f"), io.hset("io:h", "f", "w"), io.hget("io:h", "f"), io.hgetall("io:h"),
]));
note("io list", await Promise.all([io.rpush("io:l", "a", "b"), io.lrange("io:l", 0, -1), io.lpop("io:l"), io.llen("io:l")]));
note("io set", await Promise.all([io.sadd("io:set", "x"), io.sismember("io:set", "x"), io.srem("io:set", "x"), io.scard("io:set")]));
note("io zset", await Promise.all([io.zadd("io:z", 1, "m"), io.zscore("io:z", "m"), io.zincrby("io:z", 2, "m"), io.zrange("io:z", 0, -1, "WITHSCORES")]));
note("io multi", await io.multi().set("io:t", "a").append("io:t", "b").get("io:t").exec());
note("io eval", await io.eval("redis.call('SET', KEYS[1], ARGV[1]); return redis.call('GET', KEYS[1])", 1, "io:lua", "x"));
setTimeout(() => ioOther.rpush("io:q", "job"), 300);
note("io blpop", await io.blpop("io:q", 5));
const sub = new Redis({ port, host: "127.0.0.1" });
const got = new Promise((resolve) => sub.on("message", (channel, message) => resolve([channel, message])));
note("io subscribe", await sub.subscribe("io:ch"));
note("io publish", await io.publish("io:ch", "hello"));
note("io message", await got);
await sub.quit();
let stale = 0;
for (let i = 0; i < 100; i++) {
  const [, value] = await Promise.all([io.set("io:ryw", `v${i}`), io.get("io:ryw")]);
  if (value !== `v${i}`) stale++;
}
note("io stale reads", stale);
try {
  await io.call("NOSUCHCOMMAND", "x");
} catch (error) {
  note("io unknown command", error.message);
}
io.disconnect();
ioOther.disconnect();

// node-redis, RESP2 and RESP3.
for (const RESP of [2, 3]) {
  const client = createClient({ socket: { port, host: "127.0.0.1" }, RESP });
  await client.connect();
  const p = `nr${RESP}:`;
  note("nr set/get", [await client.set(p + "s", "1"), await client.get(p + "s")]);
  note("nr hash", [await client.hSet(p + "h", "f", "v"), await client.hGet(p + "h", "f"), await client.hSet(p + "h", "f", "w"), await client.hGet(p + "h", "f")]);
  note("nr hgetall", await client.hGetAll(p + "h"));
  note("nr multi", await client.multi().set(p + "t", "a").get(p + "t").exec());
  note("nr zscore", [await client.zAdd(p + "z", { score: 2.5, value: "m" }), await client.zScore(p + "z", "m")]);
  await client.quit();
}

"""redis-py doing ordinary work, for comparing a proxy in transparent mode with
Redis itself: the same script runs against both and prints a transcript of
every answer; the two transcripts must be equal.

Usage: redis_py_forwarding.py PORT
Runs with protocol 2, then 3, against an empty database. Messages go through a
second client of the same PORT (pub/sub, BLPOP wake-up, WATCH conflict). With
KEY_TAG=1 every key carries one hash tag per protocol, so that a Redis Cluster
serves each run's keys from one slot, as a cluster client's transactions need.
"""
import os
import sys
import threading
import time

import redis

port = int(sys.argv[1])


def note(label, value):
    print(f"{label}: {value!r}", flush=True)


for protocol in (2, 3):
    r = redis.Redis(host="127.0.0.1", port=port, protocol=protocol, socket_timeout=10)
    other = redis.Redis(host="127.0.0.1", port=port, protocol=protocol, socket_timeout=10)
    p = f"{{p{protocol}}}:" if os.environ.get("KEY_TAG") else f"p{protocol}:"
    note("ping", r.ping())

    # Strings.
    note("set", r.set(p + "s", "one"))
    note("get", r.get(p + "s"))
    note("append", r.append(p + "s", "-two"))
    note("get after append", r.get(p + "s"))
    note("strlen", r.strlen(p + "s"))
    note("getrange", r.getrange(p + "s", 0, 2))
    note("incr", r.incr(p + "n"))
    note("incrby", r.incrby(p + "n", 41))
    note("mset", r.mset({p + "a": "1", p + "b": "2"}))
    note("mget", r.mget([p + "a", p + "b", p + "missing"]))
    note("exists", r.exists(p + "a"))
    note("del", r.delete(p + "a"))
    note("exists after del", r.exists(p + "a"))
    note("get after del", r.get(p + "a"))
    note("type", r.type(p + "s"))

    # Hashes: read, change, read again (the cached reply must go).
    note("hset", r.hset(p + "h", mapping={"f1": "v1", "f2": "v2"}))
    note("hget", r.hget(p + "h", "f1"))
    note("hgetall", sorted(r.hgetall(p + "h").items()))
    note("hset again", r.hset(p + "h", "f1", "v1b"))
    note("hget after hset", r.hget(p + "h", "f1"))
    note("hmget", r.hmget(p + "h", ["f1", "f2", "nope"]))
    note("hexists", r.hexists(p + "h", "f2"))
    note("hincrby", r.hincrby(p + "h", "count", 3))
    note("hlen", r.hlen(p + "h"))
    note("hdel", r.hdel(p + "h", "f2"))
    note("hgetall after hdel", sorted(r.hgetall(p + "h").items()))

    # Lists.
    note("rpush", r.rpush(p + "l", "a", "b", "c"))
    note("lrange", r.lrange(p + "l", 0, -1))
    note("lpush", r.lpush(p + "l", "z"))
    note("lrange after lpush", r.lrange(p + "l", 0, -1))
    note("llen", r.llen(p + "l"))
    note("lpop", r.lpop(p + "l"))
    note("llen after lpop", r.llen(p + "l"))

    # Sets.
    note("sadd", r.sadd(p + "set", "x", "y"))
    note("smembers", sorted(r.smembers(p + "set")))
    note("sismember", r.sismember(p + "set", "x"))
    note("srem", r.srem(p + "set", "x"))
    note("sismember after srem", r.sismember(p + "set", "x"))
    note("scard", r.scard(p + "set"))

    # Sorted sets.
    note("zadd", r.zadd(p + "z", {"m1": 1.5, "m2": 2}))
    note("zrange", r.zrange(p + "z", 0, -1, withscores=True))
    note("zscore", r.zscore(p + "z", "m1"))
    note("zincrby", r.zincrby(p + "z", 2, "m1"))
    note("zscore after zincrby", r.zscore(p + "z", "m1"))
    note("zcard", r.zcard(p + "z"))

    # Streams, with ids chosen by the client so both runs agree.
    note("xadd", r.xadd(p + "x", {"k": "v"}, id="1-1"))
    note("xadd 2", r.xadd(p + "x", {"k": "w"}, id="2-1"))
    note("xrange", r.xrange(p + "x"))
    note("xlen", r.xlen(p + "x"))

    # A pipeline without a transaction, a read after a write inside it.
    pipe = r.pipeline(transaction=False)
    pipe.set(p + "pl", "1").get(p + "pl").hset(p + "h", "f1", "in-pipe").hget(p + "h", "f1").incr(p + "pl")
    note("pipeline", pipe.execute())

    # A pipeline with a transaction.
    pipe = r.pipeline(transaction=True)
    pipe.set(p + "tx", "a").append(p + "tx", "b").get(p + "tx").hget(p + "h", "f1")
    note("transaction", pipe.execute())
    note("get after transaction", r.get(p + "tx"))

    # WATCH with a retry loop: the first attempt is spoilt by another client.
    r.set(p + "counter", 10)
    attempts = []

    def bump(pipe):
        value = int(pipe.get(p + "counter"))
        if not attempts:
            other.set(p + "counter", 100)
        attempts.append(value)
        pipe.multi()
        pipe.set(p + "counter", value + 1)

    r.transaction(bump, p + "counter")
    note("watch attempts", attempts)
    note("counter", r.get(p + "counter"))

    # Lua with keys.
    note("eval", r.eval("redis.call('SET', KEYS[1], ARGV[1]); return redis.call('GET', KEYS[1])", 1, p + "lua", "from-lua"))
    note("get after eval", r.get(p + "lua"))

    # BLPOP woken by another client.
    def push_later():
        time.sleep(0.3)
        other.rpush(p + "queue", "job")

    threading.Thread(target=push_later).start()
    note("blpop", r.blpop([p + "queue"], timeout=5))

    # Pub/sub, messages both ways: this client listens while the other
    # publishes, then the other listens while this one publishes.
    for listener, speaker, channel in ((r, other, p + "ch1"), (other, r, p + "ch2")):
        pubsub = listener.pubsub()
        pubsub.subscribe(channel)
        note("subscribed", pubsub.get_message(timeout=2)["type"])
        note("published", speaker.publish(channel, "hello"))
        message = pubsub.get_message(timeout=2)
        note("message", (message["type"], message["channel"], message["data"]))
        pubsub.unsubscribe(channel)
        note("unsubscribed", pubsub.get_message(timeout=2)["type"])
        pubsub.close()

    # Errors are Redis's own.
    try:
        r.execute_command("NOSUCHCOMMAND", "x")
    except redis.ResponseError as error:
        note("unknown command", str(error))
    try:
        r.hget(p + "s", "f")
    except redis.ResponseError as error:
        note("wrong type", str(error))

    # Read your writes, many times over.
    stale = 0
    for i in range(200):
        r.set(p + "ryw", f"v{i}")
        if r.get(p + "ryw") != f"v{i}".encode():
            stale += 1
        r.hset(p + "rywh", "f", i)
        if r.hget(p + "rywh", "f") != str(i).encode():
            stale += 1
    note("stale reads", stale)

    # The whole keyspace (in a cluster: every primary's). SCAN may repeat a
    # key by its contract, so its keys are compared as a set.
    note("keys", sorted(r.keys(p + "*")))
    note("scan", sorted(set(r.scan_iter(match=p + "*", count=3))))
    note("dbsize", r.dbsize())
    note("script exists", r.script_exists(r.script_load("return 1"), "0" * 40))
    r.close()
    other.close()

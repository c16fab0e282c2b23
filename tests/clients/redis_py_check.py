"""redis-py against the proxy, unmodified: RESP2 and RESP3.

Usage: redis_py_check.py PROXY_PORT
Redis must hold: k = "v", bin = bytes 0..255, and k = "v2" in database 2;
"missing" must not exist.
Exits non-zero with a message on the first mismatch.
"""
import sys

import redis

port = int(sys.argv[1])
binary = bytes(range(256))

for protocol in (2, 3):
    r = redis.Redis(host="127.0.0.1", port=port, protocol=protocol, socket_timeout=10)
    assert r.ping() is True, "ping"
    assert r.get("k") == b"v", f"get k (protocol {protocol})"
    assert r.get("missing") is None, f"get missing (protocol {protocol})"
    assert r.get("bin") == binary, f"binary value (protocol {protocol})"
    assert r.mget(["k", "missing", "bin"]) == [b"v", None, binary], f"mget (protocol {protocol})"
    pipe = r.pipeline(transaction=False)
    for i in range(200):
        pipe.get("k" if i % 2 == 0 else "missing")
    results = pipe.execute()
    assert results == [b"v" if i % 2 == 0 else None for i in range(200)], "pipeline of 200 GETs"
    try:
        r.set("k", "changed")
        raise AssertionError("SET must be refused")
    except redis.ResponseError as e:
        assert "SET" in str(e).upper(), str(e)
    info = r.client_info()
    assert info["db"] == 0 and "tot-mem" in info, f"client_info (protocol {protocol}): {info}"
    r.close()
    in_two = redis.Redis(host="127.0.0.1", port=port, protocol=protocol, db=2, socket_timeout=10)
    assert in_two.get("k") == b"v2", f"db=2 (protocol {protocol})"
    assert in_two.client_info()["db"] == 2, f"client_info db (protocol {protocol})"
    in_two.close()
    print(f"redis-py {redis.__version__} protocol {protocol}: ok")

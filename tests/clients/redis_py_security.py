"""redis-py against a proxy with authentication (and TLS when a CA is given).

Usage: redis_py_security.py PROXY_PORT [CA_FILE]
The proxy's default user has the password "pw-default"; user "app" has
"pw-app" and may read "app:*" only. Redis must hold app:1 = "one" and
other:1 = "secret".
Exits non-zero with a message on the first mismatch.
"""
import sys

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

# redis-py retries an authentication error (a kind of connection error) with
# backoff, against Redis as here; refusals are checked without retries.
no_retry = {"retry": Retry(NoBackoff(), 0)}

port = int(sys.argv[1])
tls = {}
if len(sys.argv) > 2:
    tls = {"ssl": True, "ssl_ca_certs": sys.argv[2], "ssl_check_hostname": False}

for protocol in (2, 3):
    default = redis.Redis(host="127.0.0.1", port=port, protocol=protocol,
                          password="pw-default", socket_timeout=10, **tls)
    assert default.get("app:1") == b"one", f"default user (protocol {protocol})"
    assert default.get("other:1") == b"secret", f"default user reads all (protocol {protocol})"
    default.close()

    app = redis.Redis(host="127.0.0.1", port=port, protocol=protocol,
                      username="app", password="pw-app", socket_timeout=10, **tls)
    assert app.get("app:1") == b"one", f"user app (protocol {protocol})"
    try:
        app.get("other:1")
        raise AssertionError("a key outside app:* must be refused")
    except redis.exceptions.NoPermissionError as e:
        assert "No permissions to access a key" in str(e), str(e)
    try:
        app.mget(["app:1", "other:1"])
        raise AssertionError("an MGET with a key outside app:* must be refused whole")
    except redis.exceptions.NoPermissionError:
        pass
    app.close()

    wrong = redis.Redis(host="127.0.0.1", port=port, protocol=protocol,
                        username="app", password="nope", socket_timeout=10, **tls, **no_retry)
    try:
        wrong.get("app:1")
        raise AssertionError("a wrong password must be refused")
    except redis.exceptions.AuthenticationError as e:
        assert "invalid username-password pair" in str(e), str(e)
    wrong.close()

    anonymous = redis.Redis(host="127.0.0.1", port=port, protocol=2, socket_timeout=10,
                            **tls, **no_retry)
    try:
        anonymous.get("app:1")
        raise AssertionError("a client without credentials must be refused")
    except redis.exceptions.AuthenticationError as e:
        assert "Authentication required" in str(e), str(e)
    anonymous.close()
    print(f"redis-py {redis.__version__} protocol {protocol}{' tls' if tls else ''}: ok")

#!/usr/bin/env bash
# The test suites redis-py and ioredis ship, run against Redis and against
# the proxy in transparent mode (--forward-commands --forward-admin-commands
# --invalidation tracking) in front of an identical Redis, and both counts
# printed. Not part of `make test`: the suites come from the libraries' own
# repositories, which the test machine cannot reach.
#
#   scripts/client-suites.sh REDIS_PY_CHECKOUT IOREDIS_CHECKOUT
#
# REDIS_PY_CHECKOUT: a checkout of github.com/redis/redis-py (tag v8.1.0);
# its dev requirements are installed into a virtualenv under target/.
# IOREDIS_CHECKOUT: a checkout of github.com/redis/ioredis (tag v5.9.2), with
# `npm ci` run in it. ioredis's tests talk to 127.0.0.1:6379, which must be
# free: Redis, then the proxy, listen there in turn.
#
# Environment: REDIS_PY_TESTS, what pytest runs (tests: all of it; e.g.
# tests/test_commands.py for a shorter run).
set -euo pipefail
cd "$(dirname "$0")/.."
redis_py=$(realpath "$1")
ioredis=$(realpath "$2")

script=client-suites
source scripts/lib.sh
need_packages redis-server=redis-server
cargo build --release --locked --quiet --bin redis-proxy
proxy_bin=$PWD/target/release/redis-proxy
dir=$PWD/target/client-suites
rm -rf "$dir" && mkdir -p "$dir"

venv=$dir/venv
python3 -m venv "$venv"
"$venv/bin/pip" install -q pytest pytest-asyncio pytest-timeout pytest-forked numpy ujson xxhash \
  packaging pybreaker aiohttp opentelemetry-api opentelemetry-sdk \
  opentelemetry-exporter-otlp-proto-http redis-entraid==1.2.1 uvloop

# proxy PORT BACKEND_PORT: the proxy in transparent mode, in the background.
proxy() {
  "$proxy_bin" --redis-url "redis://127.0.0.1:$2" --resp-addr "127.0.0.1:$1" \
    --http-addr 127.0.0.1:0 --admin-addr 127.0.0.1:0 \
    --forward-commands --forward-admin-commands --invalidation tracking \
    >"$dir/proxy-$1.log" 2>&1 &
  echo $!
}

wait_port() { # PORT
  for _ in $(seq 100); do
    redis-cli -p "$1" ping >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "nothing answers on port $1" >&2
  return 1
}

redis_at() { # PORT
  redis-server --port "$1" --save '' --appendonly no --daemonize yes \
    --dir "$dir" --logfile "$dir/redis-$1.log" --pidfile "$dir/redis-$1.pid"
  wait_port "$1"
}

stop_redis() { # PORT
  redis-cli -p "$1" shutdown nosave >/dev/null 2>&1 || true
}

# redis-py: every test but the cluster-only ones and those needing other
# services (multi-database, maintenance notifications, scenarios, HTTP).
pytest_run() { # PORT LOG
  (cd "$redis_py" && "$venv/bin/python" -m pytest ${REDIS_PY_TESTS:-tests} --redis-url="redis://127.0.0.1:$1" \
    -q -p no:cacheprovider --timeout 60 -rfE -m "not onlycluster" \
    --ignore=tests/test_scenario --ignore=tests/test_multidb \
    --ignore=tests/maint_notifications --ignore=tests/test_http) >"$2" 2>&1 || true
  tail -n 1 "$2"
}

redis_at 7601
redis_at 7602
proxy_pid=$(proxy 7603 7602)
wait_port 7603
echo "redis-py, straight to Redis:"
pytest_run 7601 "$dir/redis-py-redis.log"
echo "redis-py, through the proxy:"
pytest_run 7603 "$dir/redis-py-proxy.log"
kill "$proxy_pid"
stop_redis 7601
stop_redis 7602

mocha_run() { # LOG
  (cd "$ioredis" && TS_NODE_TRANSPILE_ONLY=true NODE_ENV=test npx mocha --no-experimental-strip-types \
    "test/helpers/*.ts" "test/unit/**/*.ts" "test/functional/**/*.ts" --exit) >"$1" 2>&1 || true
  grep -E "passing|failing|pending" "$1" | tail -n 3
}

redis_at 6379
echo "ioredis, straight to Redis:"
mocha_run "$dir/ioredis-redis.log"
stop_redis 6379
redis_at 7604
proxy_pid=$(proxy 6379 7604)
wait_port 6379
echo "ioredis, through the proxy:"
mocha_run "$dir/ioredis-proxy.log"
kill "$proxy_pid"
stop_redis 7604
echo "logs (failures listed with -rfE and by mocha): $dir"

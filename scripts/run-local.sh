#!/usr/bin/env bash
# Runs the proxy against the configured Redis. When nothing answers at the
# effective address (what `redis-proxy --print-config` says), the address is
# local, and redis-server is installed, starts a throwaway Redis there (data
# under target/redis-run) and stops it on exit. Exits with the proxy's status.
#
# Usage: scripts/run-local.sh PATH/TO/redis-proxy [proxy flags...]
set -euo pipefail

proxy=$1
shift

# The effective Redis address, as the proxy itself reads its flags, environment
# and file. A configuration it refuses stops here, with its status.
status=0
config=$("$proxy" "$@" --print-config) || status=$?
if ((status != 0)); then
  exit "$status"
fi
url=$(sed -n 's/^redis_url = "\(.*\)"$/\1/p' <<<"$config")
url=${url%%,*}

# redis://[user:pass@]host[:port][/db] -> host, port
hostport=${url#*://}
hostport=${hostport##*@}
hostport=${hostport%%/*}
host=${hostport%:*}
port=${hostport##*:}
[[ $hostport == *:* ]] || port=6379

answers() { (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; }

redis_pid=
cleanup() { [[ -n $redis_pid ]] && kill "$redis_pid" 2>/dev/null && wait "$redis_pid" 2>/dev/null; true; }
trap cleanup EXIT

if ! answers; then
  case $host in
    127.0.0.1 | localhost | ::1) ;;
    *) echo "run: nothing answers at $host:$port; starting the proxy anyway (misses fail until Redis is up)" >&2 ;;
  esac
  if [[ $host == 127.0.0.1 || $host == localhost ]] && command -v redis-server >/dev/null; then
    mkdir -p target/redis-run
    echo "run: no Redis at $host:$port; starting a throwaway redis-server (data in target/redis-run)" >&2
    redis-server --port "$port" --bind 127.0.0.1 --dir target/redis-run --save "" --appendonly no \
      --logfile redis.log &
    redis_pid=$!
    for _ in $(seq 50); do answers && break; sleep 0.1; done
  fi
fi

"$proxy" "$@" &
proxy_pid=$!
trap 'kill -TERM "$proxy_pid" 2>/dev/null' INT TERM
# The proxy's status is the script's: 0 after Ctrl-C (a graceful stop), 1 when
# it could not start (an address in use), 2 for a configuration it refused.
status=0
wait "$proxy_pid" || status=$?
# A signal interrupted the first wait: wait for the proxy itself.
if kill -0 "$proxy_pid" 2>/dev/null; then
  status=0
  wait "$proxy_pid" || status=$?
fi
exit "$status"

#!/usr/bin/env bash
# make run-sentinel: a Sentinel-managed Redis (a primary, one replica and three
# sentinels named "mymaster", on ports SENTINEL_BASE_PORT .. +4, default
# 6400) and the proxy in front of it in sentinel mode. Data lives under
# target/sentinel-run; Ctrl-C stops everything.
#
#   redis-cli -p 6400 set user:1 ann               # write to the primary
#   curl 127.0.0.1:8080/user:1                     # read through the proxy
#   redis-cli -p 6400 shutdown nosave              # the sentinels promote the
#   curl 127.0.0.1:8080/user:2                     # replica; the proxy follows
#
# Usage: scripts/run-sentinel.sh PATH/TO/redis-proxy [proxy flags...]
set -euo pipefail
cd "$(dirname "$0")/.."

proxy=$1
shift
base=${SENTINEL_BASE_PORT:-6400}
dir=target/sentinel-run
script=run-sentinel
source scripts/lib.sh

rm -rf "$dir"
for port in "$base" "$((base + 1))"; do
  mkdir -p "$dir/$port"
  extra=()
  if ((port != base)); then extra=(--replicaof 127.0.0.1 "$base"); fi
  redis-server --port "$port" --bind 127.0.0.1 --dir "$dir/$port" --save "" --appendonly no \
    --repl-diskless-sync-delay 0 --logfile redis.log "${extra[@]}" &
  pids+=("$!")
done
wait_port "$base"
wait_port "$((base + 1))"
sentinels=()
for port in "$((base + 2))" "$((base + 3))" "$((base + 4))"; do
  mkdir -p "$dir/$port"
  cat > "$dir/$port/sentinel.conf" <<CONF
port $port
bind 127.0.0.1
dir $PWD/$dir/$port
logfile sentinel.log
sentinel monitor mymaster 127.0.0.1 $base 2
sentinel down-after-milliseconds mymaster 1000
sentinel failover-timeout mymaster 5000
CONF
  redis-server "$dir/$port/sentinel.conf" --sentinel &
  pids+=("$!")
  sentinels+=("127.0.0.1:$port")
done
for port in "$((base + 2))" "$((base + 3))" "$((base + 4))"; do wait_port "$port"; done
echo "run-sentinel: primary 127.0.0.1:$base, replica 127.0.0.1:$((base + 1)), sentinels ${sentinels[*]} (master mymaster; logs in $dir)" >&2

urls=$(IFS=,; echo "${sentinels[*]}")
"$proxy" --redis-mode sentinel --sentinel-master mymaster --redis-url "redis://$urls" "$@" &
proxy_pid=$!
pids+=("$proxy_pid")
wait "$proxy_pid"

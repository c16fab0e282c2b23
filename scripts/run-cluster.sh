#!/usr/bin/env bash
# make run-cluster: a local Redis Cluster (three primaries, three replicas, on
# ports CLUSTER_PORT .. CLUSTER_PORT+5, default 7000) and the proxy in front of
# it in cluster mode. Data lives under target/cluster-run; Ctrl-C stops
# everything.
#
#   redis-cli -c -p 7000 set user:1 ann      # write through the cluster
#   curl 127.0.0.1:8080/user:1               # read through the proxy
#   redis-cli -p 6380 get user:1
#
# Usage: scripts/run-cluster.sh PATH/TO/redis-proxy [proxy flags...]
set -euo pipefail
cd "$(dirname "$0")/.."

proxy=$1
shift
base=${CLUSTER_PORT:-7000}
dir=target/cluster-run
script=run-cluster
source scripts/lib.sh

rm -rf "$dir"
addresses=()
for i in 0 1 2 3 4 5; do
  port=$((base + i))
  mkdir -p "$dir/$port"
  redis-server --port "$port" --bind 127.0.0.1 --dir "$dir/$port" --save "" --appendonly no \
    --cluster-enabled yes --cluster-node-timeout 2000 --cluster-require-full-coverage no \
    --repl-diskless-sync-delay 0 --logfile redis.log &
  pids+=("$!")
  addresses+=("127.0.0.1:$port")
done
for address in "${addresses[@]}"; do wait_port "${address#*:}"; done
redis-cli --cluster create "${addresses[@]}" --cluster-replicas 1 --cluster-yes > "$dir/create.log"
for _ in $(seq 100); do
  redis-cli -p "$base" cluster info | grep -q cluster_state:ok && break
  sleep 0.1
done
echo "run-cluster: a Redis Cluster on 127.0.0.1:$base-$((base + 5)) (logs in $dir)" >&2

"$proxy" --redis-mode cluster \
  --redis-url "redis://127.0.0.1:$base,redis://127.0.0.1:$((base + 1)),redis://127.0.0.1:$((base + 2))" "$@" &
proxy_pid=$!
pids+=("$proxy_pid")
wait "$proxy_pid"

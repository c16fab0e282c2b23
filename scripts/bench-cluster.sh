#!/usr/bin/env bash
# make bench, cluster mode: the proxy in front of a three-primary Redis Cluster.
#
#   - misses: a proxy with a one-key cache (every GET goes to the cluster)
#     against redis-benchmark --cluster going straight to the nodes (what a
#     cluster-aware client does best), at -P 1 and -P 16;
#   - hits: the same proxy with a warm cache against a proxy in front of one
#     standalone Redis: a hit never looks at the slot map, so the two cost the
#     same.
# Reports throughput and CPU per request (the proxy's; for the direct runs, the
# three primaries'), medians over BENCH_ROUNDS (3) interleaved rounds.
#
# Environment: BENCH_REQUESTS (per run, 100000; eight times that at -P 16),
# BENCH_ROUNDS (3), BENCH_PROXY (the proxy binary to measure).
set -euo pipefail
cd "$(dirname "$0")/.."

requests=${BENCH_REQUESTS:-100000}
rounds=${BENCH_ROUNDS:-3}
proxy=${BENCH_PROXY:-target/release/redis-proxy}

script=bench-cluster
source scripts/lib.sh
need_packages redis-server=redis-server redis-benchmark=redis-tools

cargo build --release --locked --quiet --bin redis-proxy
dir=target/bench-cluster
rm -rf "$dir" && mkdir -p "$dir"

nodes=()
node_pids=()
for i in 0 1 2; do
  port=$(free_port)
  mkdir -p "$dir/$port"
  redis-server --port "$port" --bind 127.0.0.1 --dir "$dir/$port" --save "" --appendonly no \
    --cluster-enabled yes --cluster-port "$(free_port)" --cluster-node-timeout 2000 \
    --logfile redis.log &
  pids+=("$!")
  node_pids+=("$!")
  nodes+=("127.0.0.1:$port")
done
for node in "${nodes[@]}"; do wait_port "${node#*:}"; done
redis-cli --cluster create "${nodes[@]}" --cluster-yes > "$dir/create.log"
first=${nodes[0]#*:}
for _ in $(seq 100); do
  redis-cli -p "$first" cluster info | grep -q cluster_state:ok && break
  sleep 0.1
done
sleep 1

start_redis "$dir" single.log
single=$redis_port

seeds="redis://${nodes[0]},redis://${nodes[1]},redis://${nodes[2]}"
start_proxy() { # PORT FLAGS... -> pid
  local port=$1
  shift
  RUST_LOG=warn "$proxy" --http-addr 127.0.0.1:0 --resp-addr "127.0.0.1:$port" \
    --admin-addr 127.0.0.1:0 "$@" > "$dir/proxy-$port.log" 2>&1 &
  pids+=("$!")
  echo "$!"
}
miss_port=$(free_port)
miss_pid=$(start_proxy "$miss_port" --redis-mode cluster --redis-url "$seeds" --cache-capacity 1)
hit_port=$(free_port)
hit_pid=$(start_proxy "$hit_port" --redis-mode cluster --redis-url "$seeds" --cache-capacity 100000 --cache-ttl 1h)
single_port=$(free_port)
single_pid=$(start_proxy "$single_port" --redis-url "redis://127.0.0.1:$single" --cache-capacity 100000 --cache-ttl 1h)
for port in "$miss_port" "$hit_port" "$single_port"; do wait_port "$port"; done

# 1,000 keys of 100 bytes in the cluster and in the standalone Redis, named as
# redis-benchmark names them (key:000000000000 ..); in cluster mode
# redis-benchmark tags its own keys per node, so it seeds them itself.
value=$(printf 'x%.0s' $(seq 100))
for i in $(seq 0 999); do printf 'SET key:%012d %s\n' "$i" "$value"; done \
  | redis-cli -c -p "$first" > /dev/null
redis-benchmark --cluster -p "$first" -t set -r 1000 -d 100 -n 50000 -c 20 -q > /dev/null 2>&1
redis-benchmark -p "$single" -t set -r 1000 -d 100 -n 50000 -c 20 -q > /dev/null 2>&1
for port in "$hit_port" "$single_port"; do
  redis-benchmark -p "$port" -t get -r 1000 -n 20000 -c 20 -q > /dev/null 2>&1
done


# run PIPELINE "PIDS" ARGS... -> "rps cpu_us_per_request"
run() {
  local pipeline=$1 measured=$2 n=$requests before after rps
  shift 2
  ((pipeline > 1)) && n=$((requests * 8))
  # shellcheck disable=SC2086
  before=$(ticks $measured)
  rps=$(redis-benchmark "$@" -t get -r 1000 -d 100 -c 50 -n "$n" -P "$pipeline" --csv 2>/dev/null \
    | awk -F, '/^"GET"/ { gsub(/"/, ""); print $2 }')
  # shellcheck disable=SC2086
  after=$(ticks $measured)
  echo "$rps $(per_request $((after - before)) "$n")"
}

declare -A samples
for ((round = 1; round <= rounds; round++)); do
  for pipeline in 1 16; do
    samples[miss/$pipeline]+="$(run "$pipeline" "$miss_pid" -p "$miss_port")"$'\n'
    samples[direct/$pipeline]+="$(run "$pipeline" "${node_pids[*]}" --cluster -p "$first")"$'\n'
    samples[hit/$pipeline]+="$(run "$pipeline" "$hit_pid" -p "$hit_port")"$'\n'
    samples[single/$pipeline]+="$(run "$pipeline" "$single_pid" -p "$single_port")"$'\n'
  done
done
column() { printf '%s' "${samples[$1]}" | awk -v c="$2" 'NF { print $c }' | median; }

printf '\nCluster mode (3 primaries), GET of 1,000 keys of 100 bytes, -c 50, median of %s rounds\n\n' "$rounds"
printf '%-6s %-44s %12s %13s\n' "-P" "target" "requests/s" "CPU us/req"
for pipeline in 1 16; do
  printf '%-6s %-44s %12s %13s\n' "$pipeline" "proxy, every GET a miss (proxy's CPU)" "$(column "miss/$pipeline" 1)" "$(column "miss/$pipeline" 2)"
  printf '%-6s %-44s %12s %13s\n' "$pipeline" "redis-benchmark --cluster direct (nodes' CPU)" "$(column "direct/$pipeline" 1)" "$(column "direct/$pipeline" 2)"
  printf '%-6s %-44s %12s %13s\n' "$pipeline" "proxy over the cluster, hits" "$(column "hit/$pipeline" 1)" "$(column "hit/$pipeline" 2)"
  printf '%-6s %-44s %12s %13s\n' "$pipeline" "proxy over one Redis, hits" "$(column "single/$pipeline" 1)" "$(column "single/$pipeline" 2)"
done
printf '\nRatios (median of per-round ratios):\n'
for pipeline in 1 16; do
  printf '  %-48s %5s\n' "misses -P $pipeline: proxy / direct, throughput" "$(paired "${samples[miss/$pipeline]}" "${samples[direct/$pipeline]}" 1)"
  printf '  %-48s %5s\n' "hits -P $pipeline: cluster / standalone, CPU per request" "$(paired "${samples[hit/$pipeline]}" "${samples[single/$pipeline]}" 2)"
done

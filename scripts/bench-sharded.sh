#!/usr/bin/env bash
# make bench, sharded pools: the proxy and twemproxy (nutcracker) in front of
# the same pool of three redis-servers, read from the same nutcracker.yml
# (fnv1a_64, ketama), in one run.
#
#   - misses: the proxy with a one-key cache (every GET goes to the key's
#     server) against nutcracker, at -P 1 and -P 16;
#   - hits: the proxy with a warm cache against nutcracker, at -P 16.
# Reports throughput and CPU per request of the proxy and of nutcracker (and
# of the three servers behind each), medians over BENCH_ROUNDS (3)
# interleaved rounds. Every server runs at its default thread count.
#
# Environment: BENCH_REQUESTS (per run, 100000; eight times that at -P 16),
# BENCH_ROUNDS (3), BENCH_PROXY (the proxy binary to measure).
set -euo pipefail
cd "$(dirname "$0")/.."

requests=${BENCH_REQUESTS:-100000}
rounds=${BENCH_ROUNDS:-3}
proxy=${BENCH_PROXY:-target/release/redis-proxy}

script=bench-sharded
source scripts/lib.sh
need_packages redis-server=redis-server redis-benchmark=redis-tools nutcracker=nutcracker

cargo build --release --locked --quiet --bin redis-proxy
dir=target/bench-sharded
rm -rf "$dir" && mkdir -p "$dir"

servers=()
server_pids=()
for i in 0 1 2; do
  start_redis "$dir" "redis-$i.log"
  servers+=("$redis_port")
  server_pids+=("$redis_pid")
done

start_nutcracker "$dir" "${servers[@]}"

start_proxy() { # PORT FLAGS... -> pid
  local port=$1
  shift
  RUST_LOG=warn "$proxy" --twemproxy-config "$dir/nutcracker.yml" --http-addr 127.0.0.1:0 \
    --resp-addr "127.0.0.1:$port" --admin-addr 127.0.0.1:0 "$@" > "$dir/proxy-$port.log" 2>&1 &
  pids+=("$!")
  echo "$!"
}
miss_port=$(free_port)
miss_pid=$(start_proxy "$miss_port" --cache-capacity 1)
hit_port=$(free_port)
hit_pid=$(start_proxy "$hit_port" --cache-capacity 100000 --cache-ttl 1h)
for port in "$nut_port" "$miss_port" "$hit_port"; do wait_port "$port"; done

# 1,000 keys of 100 bytes written through nutcracker, spread as it spreads
# them; the hit proxy's cache warmed with them.
redis-benchmark -p "$nut_port" -t set -r 1000 -d 100 -n 50000 -c 20 -q > /dev/null 2>&1
for port in "${servers[@]}"; do
  echo "server $port: $(redis-cli -p "$port" dbsize) keys" >> "$dir/spread.log"
done
redis-benchmark -p "$hit_port" -t get -r 1000 -n 20000 -c 20 -q > /dev/null 2>&1

# run PORT PIPELINE PID -> "rps cpu_us_per_request servers_cpu_us_per_request"
run() {
  local pipeline=$2 n=$requests before after sbefore safter rps
  ((pipeline > 1)) && n=$((requests * 8))
  before=$(ticks "$3")
  sbefore=$(ticks "${server_pids[@]}")
  rps=$(redis-benchmark -p "$1" -t get -r 1000 -d 100 -c 50 -n "$n" -P "$pipeline" --csv 2>/dev/null \
    | awk -F, '/^"GET"/ { gsub(/"/, ""); print $2 }')
  after=$(ticks "$3")
  safter=$(ticks "${server_pids[@]}")
  echo "$rps $(per_request $((after - before)) "$n") $(per_request $((safter - sbefore)) "$n")"
}

declare -A samples
for ((round = 1; round <= rounds; round++)); do
  for pipeline in 1 16; do
    samples[miss/$pipeline]+="$(run "$miss_port" "$pipeline" "$miss_pid")"$'\n'
    samples[nutcracker/$pipeline]+="$(run "$nut_port" "$pipeline" "$nut_pid")"$'\n'
  done
  samples[hit/16]+="$(run "$hit_port" 16 "$hit_pid")"$'\n'
done
column() { printf '%s' "${samples[$1]}" | awk -v c="$2" 'NF { print $c }' | median; }

printf '\nSharded pool (3 servers, fnv1a_64 ketama, one nutcracker.yml), GET of 1,000 keys of 100 bytes, -c 50, median of %s rounds\n' "$rounds"
printf 'redis-proxy one thread per core (%s), nutcracker a single event loop\n\n' "$(nproc)"
printf '%-6s %-34s %12s %13s %20s\n' "-P" "target" "requests/s" "CPU us/req" "servers' CPU us/req"
for pipeline in 1 16; do
  printf '%-6s %-34s %12s %13s %20s\n' "$pipeline" "proxy, every GET a miss" \
    "$(column "miss/$pipeline" 1)" "$(column "miss/$pipeline" 2)" "$(column "miss/$pipeline" 3)"
  printf '%-6s %-34s %12s %13s %20s\n' "$pipeline" "nutcracker" \
    "$(column "nutcracker/$pipeline" 1)" "$(column "nutcracker/$pipeline" 2)" "$(column "nutcracker/$pipeline" 3)"
done
printf '%-6s %-34s %12s %13s %20s\n' 16 "proxy, hits" \
  "$(column "hit/16" 1)" "$(column "hit/16" 2)" "$(column "hit/16" 3)"
printf '\nRatios (proxy over nutcracker, median of per-round ratios):\n'
for pipeline in 1 16; do
  printf '  %-40s throughput %5s   CPU/request %5s\n' "sharded misses -P $pipeline / nutcracker" \
    "$(paired "${samples[miss/$pipeline]}" "${samples[nutcracker/$pipeline]}" 1)" \
    "$(paired "${samples[miss/$pipeline]}" "${samples[nutcracker/$pipeline]}" 2)"
done
printf '  %-40s throughput %5s   CPU/request %5s\n' "sharded hits -P 16 / nutcracker" \
  "$(paired "${samples[hit/16]}" "${samples[nutcracker/16]}" 1)" \
  "$(paired "${samples[hit/16]}" "${samples[nutcracker/16]}" 2)"

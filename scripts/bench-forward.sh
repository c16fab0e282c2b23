#!/usr/bin/env bash
# make bench, transparent mode: the proxy with --forward-commands side by side
# with twemproxy (nutcracker) and Redis itself, in one run, reported as ratios.
#
#   - forwarded writes: redis-benchmark -t set,incr -r 1000 -c 50 at -P 1 and
#     -P 16 through the proxy and through nutcracker (both one connection to
#     Redis per event loop), each server's CPU per request beside its throughput;
#   - mixed: 90% GET and 10% SET on 10,000 keys (two redis-benchmark runs at
#     once, 45 and 5 clients) against the proxy and against Redis directly:
#     throughput, and what the backing Redis spends per request.
# Rounds are interleaved (BENCH_ROUNDS, 3); figures are medians, ratios the
# median of per-round ratios. Every server runs with its default thread count.
#
# Environment: BENCH_REQUESTS (per write run, 100000; eight times that at
# -P 16), BENCH_ROUNDS (3), BENCH_PROXY (the proxy binary to measure).
set -euo pipefail
cd "$(dirname "$0")/.."

requests=${BENCH_REQUESTS:-100000}
rounds=${BENCH_ROUNDS:-3}
proxy=${BENCH_PROXY:-target/release/redis-proxy}

script=bench-forward
source scripts/lib.sh
need_packages redis-server=redis-server redis-benchmark=redis-tools nutcracker=nutcracker

cargo build --release --locked --quiet --bin redis-proxy
dir=target/bench-forward
rm -rf "$dir" && mkdir -p "$dir"

start_redis "$dir" redis.log

proxy_port=$(free_port)
RUST_LOG=warn "$proxy" --forward-commands --redis-url "redis://127.0.0.1:$redis_port" \
  --http-addr 127.0.0.1:0 --resp-addr "127.0.0.1:$proxy_port" --admin-addr 127.0.0.1:0 \
  --cache-ttl 1h --cache-capacity 100000 > "$dir/proxy.log" 2>&1 &
proxy_pid=$!
pids+=("$proxy_pid")
wait_port "$proxy_port"

start_nutcracker "$dir" "$redis_port"


# write_run TEST PORT PIPELINE PID -> "rps cpu_us_per_request"
write_run() {
  local before after rps n=$requests
  (($3 > 1)) && n=$((requests * 8))
  before=$(ticks "$4")
  rps=$(redis-benchmark -p "$2" -t "$1" -r 1000 -d 100 -c 50 -n "$n" -P "$3" --csv 2>/dev/null \
    | awk -F, 'NR==2 { gsub(/"/, ""); print $2 }')
  after=$(ticks "$4")
  echo "$rps $(per_request $((after - before)) "$n")"
}

# mixed_run PORT PID -> "rps server_cpu_us_per_request redis_cpu_us_per_request"
# 90% GET / 10% SET on 10,000 keys; PID is the server measured (Redis itself
# when the port is Redis's).
mixed_run() {
  local writes=$((requests / 5)) before after rbefore rafter start end
  local reads=$((writes * 9))
  before=$(ticks "$2")
  rbefore=$(ticks "$redis_pid")
  start=$(date +%s.%N)
  redis-benchmark -p "$1" -t get -r 10000 -d 100 -c 45 -n "$reads" -q > /dev/null 2>&1 &
  local get=$!
  redis-benchmark -p "$1" -t set -r 10000 -d 100 -c 5 -n "$writes" -q > /dev/null 2>&1
  wait "$get"
  end=$(date +%s.%N)
  after=$(ticks "$2")
  rafter=$(ticks "$redis_pid")
  local total=$((reads + writes))
  echo "$(awk -v n="$total" -v s="$start" -v e="$end" 'BEGIN { printf "%.0f", n / (e - s) }')" \
    "$(per_request $((after - before)) "$total")" "$(per_request $((rafter - rbefore)) "$total")"
}

# 10,000 keys for the mixed runs, and the proxy's cache warm with them.
redis-benchmark -p "$redis_port" -t set -r 10000 -d 100 -n 100000 -c 20 -q > /dev/null
redis-benchmark -p "$proxy_port" -t get -r 10000 -d 100 -n 100000 -c 20 -q > /dev/null 2>&1

declare -A samples
for ((round = 1; round <= rounds; round++)); do
  for test in set incr; do
    for pipeline in 1 16; do
      samples[proxy/$test/$pipeline]+="$(write_run "$test" "$proxy_port" "$pipeline" "$proxy_pid")"$'\n'
      samples[nutcracker/$test/$pipeline]+="$(write_run "$test" "$nut_port" "$pipeline" "$nut_pid")"$'\n'
    done
  done
  samples[proxy/mixed]+="$(mixed_run "$proxy_port" "$proxy_pid")"$'\n'
  samples[redis/mixed]+="$(mixed_run "$redis_port" "$redis_pid")"$'\n'
done
column() { printf '%s' "${samples[$1]}" | awk -v c="$2" 'NF { print $c }' | median; }

printf '\nTransparent mode (--forward-commands), median of %s rounds; redis-proxy one thread per core (%s), nutcracker and redis-server single event loops\n\n' \
  "$rounds" "$(nproc)"
printf '%-6s %-6s %-12s %12s %13s\n' "test" "-P" "target" "requests/s" "CPU us/req"
for test in set incr; do
  for pipeline in 1 16; do
    for target in proxy nutcracker; do
      key=$target/$test/$pipeline
      printf '%-6s %-6s %-12s %12s %13s\n' "$test" "$pipeline" "$target" "$(column "$key" 1)" "$(column "$key" 2)"
    done
  done
done
printf '\nMixed, 90%% GET / 10%% SET on 10,000 keys (%s requests a round)\n\n' "$((requests / 5 * 10))"
printf '%-14s %12s %18s %22s\n' "target" "requests/s" "server CPU us/req" "redis-server CPU us/req"
for target in proxy redis; do
  printf '%-14s %12s %18s %22s\n' "$target" "$(column "$target/mixed" 1)" "$(column "$target/mixed" 2)" "$(column "$target/mixed" 3)"
done

printf '\nRatios (proxy over peer, median of per-round ratios):\n'
for test in set incr; do
  for pipeline in 1 16; do
    printf '  %-40s throughput %5s   CPU/request %5s\n' "forwarded ${test^^} -P $pipeline / nutcracker" \
      "$(paired "${samples[proxy/$test/$pipeline]}" "${samples[nutcracker/$test/$pipeline]}" 1)" \
      "$(paired "${samples[proxy/$test/$pipeline]}" "${samples[nutcracker/$test/$pipeline]}" 2)"
  done
done
printf '  %-40s throughput %5s   backing Redis CPU/request %5s\n' "mixed 90/10 / Redis directly" \
  "$(paired "${samples[proxy/mixed]}" "${samples[redis/mixed]}" 1)" \
  "$(paired "${samples[proxy/mixed]}" "${samples[redis/mixed]}" 3)"

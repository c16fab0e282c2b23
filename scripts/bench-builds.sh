#!/usr/bin/env bash
# Two builds of the proxy side by side, in one run on one machine: what a change
# costs per request. Usage:
#
#   git worktree add ../before <commit> && (cd ../before && cargo build --release)
#   scripts/bench-builds.sh ../before/target/release/redis-proxy [target/release/redis-proxy]
#
# Both proxies run with their default worker threads in front of one Redis
# holding 1,000 keys of 100 bytes: hits over RESP at -P 1 and -P 16
# (redis-benchmark -t get), hits over HTTP (wrk), and misses at -P 1 (a proxy of
# capacity 1 each). The rows are interleaved over rounds (BENCH_ROUNDS, default
# 5), so a slow moment of the shared machine weighs on both builds alike; each
# row gives the median CPU per request of each build (user+system time from
# /proc/PID/stat over requests served) and the median of the per-round ratios
# after/before. Extra flags for both proxies: BENCH_ARGS. BENCH_FORWARD=1 runs
# both in transparent mode (--forward-commands) and adds forwarded SET rows.
set -euo pipefail
cd "$(dirname "$0")/.."

before=${1:?usage: scripts/bench-builds.sh BEFORE_BINARY [AFTER_BINARY]}
after=${2:-target/release/redis-proxy}
requests=${BENCH_REQUESTS:-200000}
rounds=${BENCH_ROUNDS:-5}
http_seconds=${BENCH_HTTP_SECONDS:-4}
read -r -a extra <<< "${BENCH_ARGS:-}"
forward=${BENCH_FORWARD:-}
[[ -n $forward ]] && extra+=(--forward-commands)
keys=1000

script=bench-builds
source scripts/lib.sh
need_packages redis-server=redis-server redis-benchmark=redis-tools wrk=wrk
[[ -x $before && -x $after ]] || { echo "$script: $before or $after is not a binary" >&2; exit 1; }
dir=target/bench-builds
rm -rf "$dir" && mkdir -p "$dir"
start_redis "$dir" redis.log
redis-benchmark -p "$redis_port" -t set -r "$keys" -d 100 -n 50000 -c 20 -q > /dev/null

declare -A resp_port http_port pid
# start_proxy NAME BINARY CAPACITY
start_proxy() {
  local port http
  port=$(free_port) http=$(free_port)
  RUST_LOG=warn "$2" --redis-url "redis://127.0.0.1:$redis_port" "${extra[@]}" \
    --http-addr "127.0.0.1:$http" --resp-addr "127.0.0.1:$port" --admin-addr 127.0.0.1:0 \
    --cache-ttl 1h --cache-capacity "$3" > "$dir/$1.log" 2>&1 &
  pid[$1]=$!
  pids+=("$!")
  resp_port[$1]=$port http_port[$1]=$http
  wait_port "$port"
}
start_proxy before "$before" 100000
start_proxy after "$after" 100000
start_proxy before-miss "$before" 1
start_proxy after-miss "$after" 1
for name in before after; do
  redis-benchmark -p "${resp_port[$name]}" -t get -r "$keys" -n 20000 -c 20 -q > /dev/null 2>&1
done

# resp NAME PIPELINE [TEST] -> "rps cpu_us_per_request"
resp() {
  local t0 t1 n=$requests line
  (($2 > 1)) && n=$((requests * 8))
  t0=$(ticks "${pid[$1]}")
  line=$(redis-benchmark -p "${resp_port[$1]}" -t "${3:-get}" -r "$keys" -d 100 -c 50 -n "$n" -P "$2" --csv 2>/dev/null \
    | awk -F, 'NR==2 { gsub(/"/, ""); print $2 }')
  t1=$(ticks "${pid[$1]}")
  echo "$line $(per_request $((t1 - t0)) "$n")"
}
cat > "$dir/keys.lua" <<'LUA'
request = function()
  return wrk.format("GET", string.format("/key:%012d", math.random(0, 999)))
end
LUA
# http NAME -> "rps cpu_us_per_request"
http() {
  local t0 t1
  t0=$(ticks "${pid[$1]}")
  wrk -t1 -c50 -d"${http_seconds}s" -s "$dir/keys.lua" "http://127.0.0.1:${http_port[$1]}" > "$dir/wrk.out"
  t1=$(ticks "${pid[$1]}")
  awk -v t=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" '
    /Requests\/sec/ { rps = $2 } /requests in/ { n = $1 }
    END { printf "%s %.3f\n", rps, t / hz * 1e6 / n }' "$dir/wrk.out"
}

declare -A samples
for ((round = 1; round <= rounds; round++)); do
  for side in before after; do
    samples[$side/P1]+="$(resp "$side" 1)"$'\n'
    samples[$side/P16]+="$(resp "$side" 16)"$'\n'
    samples[$side/http]+="$(http "$side")"$'\n'
    samples[$side/miss]+="$(resp "$side-miss" 1)"$'\n'
    if [[ -n $forward ]]; then
      samples[$side/set1]+="$(resp "$side" 1 set)"$'\n'
      samples[$side/set16]+="$(resp "$side" 16 set)"$'\n'
    fi
  done
done

column() { printf '%s' "${samples[$1]}" | awk -v c="$2" 'NF { print $c }' | median; }
printf '\nbefore: %s\nafter:  %s\n%s rounds, default worker threads (%s cores)\n\n' "$before" "$after" "$rounds" "$(nproc)"
printf '%-18s %14s %14s %10s %14s %14s\n' "row" "before us/req" "after us/req" "ratio" "before req/s" "after req/s"
rows=(P1 P16 http miss)
[[ -n $forward ]] && rows+=(set1 set16)
for row in "${rows[@]}"; do
  case $row in
    P1) name="RESP hit -P 1" ;; P16) name="RESP hit -P 16" ;; http) name="HTTP hit" ;; miss) name="RESP miss -P 1" ;;
    set1) name="SET -P 1" ;; set16) name="SET -P 16" ;;
  esac
  printf '%-18s %14s %14s %10s %14s %14s\n' "$name" "$(column "before/$row" 2)" "$(column "after/$row" 2)" \
    "$(paired "${samples[after/$row]}" "${samples[before/$row]}" 2)" \
    "$(column "before/$row" 1)" "$(column "after/$row" 1)"
done

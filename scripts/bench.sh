#!/usr/bin/env bash
# make bench: the proxy side by side with what users would run instead, in one
# run on one machine, reported as ratios.
#
# Starts a redis-server with 1,000 keys of 100-byte values, the proxy (release
# build) in front of it, twemproxy (nutcracker) and webdis in front of the same
# Redis, and a bare hyper server (examples/bare_hyper.rs, the HTTP ceiling). Then:
#   - RESP cached GET: redis-benchmark -t get -r 1000 -c 50 -d 100 at -P 1 and
#     -P 16 against the proxy (all hits), redis-server and nutcracker;
#   - RESP cached GET through a proxy with 50 cache rules, at -P 1, against the
#     same proxy without rules;
#   - RESP cached GET through a proxy with --hot-keys false, at -P 1 and -P 16,
#     against the same proxy counting hot keys (the default);
#   - RESP miss path: a proxy with capacity 1 (every GET goes to Redis) against
#     nutcracker, at -P 1;
#   - HTTP cached GET: wrk -t1 -c50 against the proxy (all hits), bare hyper and
#     webdis (GET /GET/key.txt), every target with the same kind of request script;
#   - memory: a fresh Redis and proxy holding 1,000,000 keys of 100 bytes; the
#     proxy's RSS per entry against Redis's used_memory per key.
# Targets are interleaved over rounds (BENCH_ROUNDS), so that a slow moment of
# the shared machine falls on all of them alike; each figure is the median, and
# each ratio the median of the ratios within a round.
#
# For every run it reports throughput and, steadier on a small machine where the
# load generator shares the cores, CPU per request: the server's user+system time
# over the run (all its threads, from /proc/PID/stat) divided by the requests it
# served. Targets are ratios of CPU per request.
#
# Every server runs with its default thread count, as users run it: the proxy
# and bare hyper one thread per core, webdis its default, redis-server and
# nutcracker one event loop. BENCH_WORKERS=N gives the proxy, bare hyper and
# webdis N threads each instead (1: every server a single event loop).
#
# Then compares the hit ratio of the lru and s3fifo cache policies on a Zipf
# stream with scans (benches/hit_ratio.rs).
#
# Needs Debian packages redis-server, redis-tools, nutcracker, webdis and wrk;
# installs the missing ones when run as root. Everything else stays under
# target/bench.
#
# Environment: BENCH_REQUESTS (per run, default 200000; eight times that at -P 16), BENCH_CLIENTS (50),
# BENCH_ROUNDS (3), BENCH_HTTP_SECONDS (per wrk run, 5), BENCH_MEMORY_KEYS
# (1000000), BENCH_WORKERS (unset: each server's default), BENCH_PROXY (the proxy
# binary to measure, default the release build: to compare two builds).
set -euo pipefail
cd "$(dirname "$0")/.."

requests=${BENCH_REQUESTS:-200000}
clients=${BENCH_CLIENTS:-50}
rounds=${BENCH_ROUNDS:-3}
http_seconds=${BENCH_HTTP_SECONDS:-5}
workers=${BENCH_WORKERS:-}
proxy=${BENCH_PROXY:-target/release/redis-proxy}
keys=1000
size=100

script=bench
source scripts/lib.sh
need_packages redis-server=redis-server redis-benchmark=redis-tools nutcracker=nutcracker \
  webdis=webdis wrk=wrk
hz=$(getconf CLK_TCK)

cargo build --release --locked --quiet --bin redis-proxy --example bare_hyper
dir=target/bench
rm -rf "$dir" && mkdir -p "$dir"

proxy_threads=()
hyper_env=()
webdis_threads=
if [[ -n $workers ]]; then
  proxy_threads=(--worker-threads "$workers")
  hyper_env=(TOKIO_WORKER_THREADS="$workers")
  webdis_threads="\"threads\": $workers,"
fi

start_redis "$dir" redis.log

proxy_port=$(free_port)
proxy_http=$(free_port)
RUST_LOG=warn "$proxy" "${proxy_threads[@]}" --redis-url "redis://127.0.0.1:$redis_port" \
  --http-addr "127.0.0.1:$proxy_http" --resp-addr "127.0.0.1:$proxy_port" --admin-addr 127.0.0.1:0 \
  --cache-ttl 1h --cache-capacity 100000 > "$dir/proxy.log" 2>&1 &
proxy_pid=$!
pids+=("$proxy_pid")
wait_port "$proxy_port"

# The same proxy with 50 cache rules, the bench's keys matching only the last.
rules_port=$(free_port)
{
  for i in $(seq 1 49); do
    printf '[[cache_rules]]\npattern = "other%s:*"\nttl = "%ss"\n\n' "$i" "$i"
  done
  printf '[[cache_rules]]\npattern = "key:*"\nttl = "1h"\n'
} > "$dir/rules.toml"
RUST_LOG=warn "$proxy" "${proxy_threads[@]}" --config "$dir/rules.toml" --redis-url "redis://127.0.0.1:$redis_port" \
  --http-addr 127.0.0.1:0 --resp-addr "127.0.0.1:$rules_port" --admin-addr 127.0.0.1:0 \
  --cache-ttl 1h --cache-capacity 100000 > "$dir/proxy-rules.log" 2>&1 &
rules_pid=$!
pids+=("$rules_pid")
wait_port "$rules_port"

# The same proxy without hot-key counting.
cold_port=$(free_port)
RUST_LOG=warn "$proxy" "${proxy_threads[@]}" --hot-keys false --redis-url "redis://127.0.0.1:$redis_port" \
  --http-addr 127.0.0.1:0 --resp-addr "127.0.0.1:$cold_port" --admin-addr 127.0.0.1:0 \
  --cache-ttl 1h --cache-capacity 100000 > "$dir/proxy-cold.log" 2>&1 &
cold_pid=$!
pids+=("$cold_pid")
wait_port "$cold_port"

miss_port=$(free_port)
RUST_LOG=warn "$proxy" "${proxy_threads[@]}" --redis-url "redis://127.0.0.1:$redis_port" \
  --http-addr 127.0.0.1:0 --resp-addr "127.0.0.1:$miss_port" --admin-addr 127.0.0.1:0 \
  --cache-capacity 1 > "$dir/proxy-miss.log" 2>&1 &
miss_pid=$!
pids+=("$miss_pid")
wait_port "$miss_port"

hyper_port=$(free_port)
env "${hyper_env[@]}" target/release/examples/bare_hyper "127.0.0.1:$hyper_port" > /dev/null &
hyper_pid=$!
pids+=("$hyper_pid")
wait_port "$hyper_port"

webdis_port=$(free_port)
cat > "$dir/webdis.json" <<JSON
{ "redis_host": "127.0.0.1", "redis_port": $redis_port, "http_host": "127.0.0.1",
  "http_port": $webdis_port, $webdis_threads "pool_size": 20, "daemonize": false,
  "database": 0, "verbosity": 0, "logfile": "$dir/webdis.log" }
JSON
webdis "$dir/webdis.json" 2> "$dir/webdis.stderr" &
webdis_pid=$!
pids+=("$webdis_pid")
wait_port "$webdis_port"

start_nutcracker "$dir" "$redis_port"

# 1,000 keys of 100 bytes: key:000000000000 .. key:000000000999, as -r 1000 names them.
redis-benchmark -p "$redis_port" -t set -r "$keys" -d "$size" -n 50000 -c 20 -q > /dev/null
[[ $(redis-cli -p "$redis_port" dbsize) == "$keys" ]] || { echo "bench: seeding failed" >&2; exit 1; }
# Warm the proxies' caches so every measured GET is a hit.
redis-benchmark -p "$proxy_port" -t get -r "$keys" -n 20000 -c 20 -q > /dev/null 2>&1
redis-benchmark -p "$rules_port" -t get -r "$keys" -n 20000 -c 20 -q > /dev/null 2>&1
redis-benchmark -p "$cold_port" -t get -r "$keys" -n 20000 -c 20 -q > /dev/null 2>&1


# resp_run TARGET PORT PIPELINE PID -> "rps p50 p99 cpu_us_per_request"
resp_run() {
  # Pipelined runs are eight times longer, so that their CPU time spans
  # enough clock ticks to be read to a few percent.
  local before after line n=$requests
  (($3 > 1)) && n=$((requests * 8))
  before=$(ticks "$4")
  # (proxies answer CONFIG GET with an error; redis-benchmark warns and goes on)
  line=$(redis-benchmark -p "$2" -t get -r "$keys" -d "$size" -c "$clients" -n "$n" -P "$3" --csv 2>/dev/null \
    | awk -F, 'NR==2 { gsub(/"/, ""); print $2, $5, $7 }')
  after=$(ticks "$4")
  echo "$line $(per_request $((after - before)) "$n")"
}

targets=(redis-proxy redis-server nutcracker)
port_of() {
  case $1 in
    redis-proxy) echo "$proxy_port" ;;
    redis-server) echo "$redis_port" ;;
    nutcracker) echo "$nut_port" ;;
    proxy-misses) echo "$miss_port" ;;
    proxy-rules) echo "$rules_port" ;;
    proxy-no-hot-keys) echo "$cold_port" ;;
  esac
}
pid_of() {
  case $1 in
    redis-proxy) echo "$proxy_pid" ;;
    redis-server) echo "$redis_pid" ;;
    nutcracker) echo "$nut_pid" ;;
    proxy-misses) echo "$miss_pid" ;;
    proxy-rules) echo "$rules_pid" ;;
    proxy-no-hot-keys) echo "$cold_pid" ;;
  esac
}

declare -A samples
for ((round = 1; round <= rounds; round++)); do
  for pipeline in 1 16; do
    for target in "${targets[@]}"; do
      samples[$target/$pipeline]+="$(resp_run "$target" "$(port_of "$target")" "$pipeline" "$(pid_of "$target")")"$'\n'
    done
  done
  samples[proxy-misses/1]+="$(resp_run proxy-misses "$miss_port" 1 "$miss_pid")"$'\n'
  samples[proxy-rules/1]+="$(resp_run proxy-rules "$rules_port" 1 "$rules_pid")"$'\n'
  for pipeline in 1 16; do
    samples[proxy-no-hot-keys/$pipeline]+="$(resp_run proxy-no-hot-keys "$cold_port" "$pipeline" "$cold_pid")"$'\n'
  done
done
column() { printf '%s' "${samples[$1]}" | awk -v c="$2" 'NF { print $c }' | median; }

if [[ -n $workers ]]; then
  threads="$workers for redis-proxy, bare hyper and webdis; redis-server and nutcracker are single event loops"
else
  threads="redis-proxy and bare hyper one per core ($(nproc)), webdis its default; redis-server and nutcracker are single event loops"
fi
printf '\nThreads: %s.\n' "$threads"
printf '\nCached GET over RESP: redis-benchmark -t get -c %s -r %s -d %s -n %s (x8 at -P 16), median of %s rounds\n\n' \
  "$clients" "$keys" "$size" "$requests" "$rounds"
printf '%-6s %-18s %12s %9s %9s %13s\n' "-P" "target" "requests/s" "p50 ms" "p99 ms" "CPU us/req"
declare -A rps cpu
for row in redis-proxy/1 proxy-rules/1 proxy-no-hot-keys/1 redis-server/1 nutcracker/1 proxy-misses/1 \
  redis-proxy/16 proxy-no-hot-keys/16 redis-server/16 nutcracker/16; do
  rps[$row]=$(column "$row" 1)
  cpu[$row]=$(column "$row" 4)
  printf '%-6s %-18s %12s %9s %9s %13s\n' "${row#*/}" "${row%/*}" "${rps[$row]}" \
    "$(column "$row" 2)" "$(column "$row" 3)" "${cpu[$row]}"
done

# --- HTTP cached GET ------------------------------------------------------------
cat > "$dir/proxy.lua" <<'LUA'
request = function()
  return wrk.format("GET", string.format("/key:%012d", math.random(0, 999)))
end
LUA
cat > "$dir/webdis.lua" <<'LUA'
request = function()
  return wrk.format("GET", string.format("/GET/key:%012d.txt", math.random(0, 999)))
end
LUA
# wrk_run URL SCRIPT PID -> "rps p50_ms p99_ms cpu_us_per_request"
wrk_run() {
  local before after
  before=$(ticks "$3")
  wrk -t1 -c50 -d"${http_seconds}s" --latency -s "$2" "$1" > "$dir/wrk.out"
  after=$(ticks "$3")
  awk -v t=$((after - before)) -v hz="$hz" '
    function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
    /Requests\/sec/ { rps = $2 }
    /requests in/ { n = $1 }
    $1 == "50%" { p50 = ms($2) }
    $1 == "99%" { p99 = ms($2) }
    / Non-2xx/ { bad = $NF }
    END { if (bad > 0) { print "bench: wrk saw non-2xx answers" > "/dev/stderr" }
          printf "%s %.3f %.3f %.3f\n", rps, p50, p99, t / hz * 1e6 / n }' "$dir/wrk.out"
}
wrk_run "http://127.0.0.1:$proxy_http" "$dir/proxy.lua" "$proxy_pid" > /dev/null # warm-up
declare -A http_samples
for ((round = 1; round <= rounds; round++)); do
  http_samples[proxy]+="$(wrk_run "http://127.0.0.1:$proxy_http" "$dir/proxy.lua" "$proxy_pid")"$'\n'
  # The bare hyper server answers any path with its static body.
  http_samples[hyper]+="$(wrk_run "http://127.0.0.1:$hyper_port" "$dir/proxy.lua" "$hyper_pid")"$'\n'
  http_samples[webdis]+="$(wrk_run "http://127.0.0.1:$webdis_port" "$dir/webdis.lua" "$webdis_pid")"$'\n'
done
http_column() { printf '%s' "${http_samples[$1]}" | awk -v c="$2" 'NF { print $c }' | median; }
declare -A http_rps http_cpu
printf '\nCached GET over HTTP: wrk -t1 -c50 -d%ss, median of %s rounds\n\n' "$http_seconds" "$rounds"
printf '%-22s %12s %9s %9s %13s\n' "target" "requests/s" "p50 ms" "p99 ms" "CPU us/req"
for target in proxy hyper webdis; do
  http_rps[$target]=$(http_column "$target" 1)
  http_cpu[$target]=$(http_column "$target" 4)
  case $target in
    proxy) name="redis-proxy (hits)" ;;
    hyper) name="bare hyper (ceiling)" ;;
    webdis) name="webdis" ;;
  esac
  printf '%-22s %12s %9s %9s %13s\n' "$name" "${http_rps[$target]}" "$(http_column "$target" 2)" \
    "$(http_column "$target" 3)" "${http_cpu[$target]}"
done

# --- memory: 1,000,000 entries ---------------------------------------------------
entries=${BENCH_MEMORY_KEYS:-1000000}
start_redis "$dir" redis-mem.log
mem_redis=$redis_port
mem_proxy=$(free_port)
mem_admin=$(free_port)
RUST_LOG=warn "$proxy" "${proxy_threads[@]}" --redis-url "redis://127.0.0.1:$mem_redis" \
  --http-addr 127.0.0.1:0 --resp-addr "127.0.0.1:$mem_proxy" --admin-addr "127.0.0.1:$mem_admin" \
  --cache-ttl 1h --cache-capacity "$entries" > "$dir/proxy-mem.log" 2>&1 &
mem_pid=$!
pids+=("$mem_pid")
wait_port "$mem_proxy"
python3 - "$entries" "$dir" <<'PY'
import sys
n, out = int(sys.argv[1]), sys.argv[2]
value = b"v" * 100
with open(f"{out}/set.resp", "wb") as f:
    for i in range(n):
        f.write(b"*3\r\n$3\r\nSET\r\n$16\r\nkey:%012d\r\n$100\r\n%s\r\n" % (i, value))
with open(f"{out}/mget.resp", "wb") as f:
    for start in range(0, n, 100):
        keys = range(start, min(n, start + 100))
        f.write(b"*%d\r\n$4\r\nMGET\r\n" % (len(keys) + 1))
        f.write(b"".join(b"$16\r\nkey:%012d\r\n" % i for i in keys))
PY
used() { redis-cli -p "$mem_redis" info memory | awk -F: '/^used_memory:/ { print $2 + 0 }'; }
rss_bytes() { awk '/^VmRSS/ { print $2 * 1024 }' "/proc/$mem_pid/status"; }
redis_before=$(used)
redis-cli -p "$mem_redis" --pipe < "$dir/set.resp" > /dev/null
redis_after=$(used)
proxy_before=$(rss_bytes)
redis-cli -p "$mem_proxy" --pipe < "$dir/mget.resp" > /dev/null
sleep 1
proxy_after=$(rss_bytes)
held=$(curl -s "http://127.0.0.1:$mem_admin/metrics" | awk '/^redis_proxy_cache_entries / { print $2 + 0 }')
[[ $held == "$entries" ]] || echo "bench: the proxy holds $held entries, not $entries" >&2
per_key_redis=$(awk -v a="$redis_after" -v b="$redis_before" -v n="$entries" 'BEGIN { printf "%.0f", (a - b) / n }')
per_entry_proxy=$(awk -v a="$proxy_after" -v b="$proxy_before" -v n="$entries" 'BEGIN { printf "%.0f", (a - b) / n }')
printf '\nMemory for %s keys of 100 bytes:\n' "$entries"
printf '  redis-server used_memory: %s bytes per key\n' "$per_key_redis"
printf '  redis-proxy RSS:          %s bytes per cached entry (%s entries held)\n' "$per_entry_proxy" "$held"

# --- the targets: ratios of CPU per request (memory: of bytes per entry) ----------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
verdict() { awk -v r="$1" -v op="$2" -v t="$3" 'BEGIN { ok = (op == ">=") ? r >= t : r <= t; print ok ? "met" : "MISSED" }'; }
row() { printf '  %-44s %6s   %s %-5s %s\n' "$1" "$2" "$3" "$4" "$(verdict "$2" "$3" "$4")"; }
printf '\nTargets (CPU per request, proxy over peer, median of per-round ratios):\n'
row "RESP hit -P 1 / redis-server" "$(paired "${samples[redis-proxy/1]}" "${samples[redis-server/1]}" 4)" "<=" 1.0
row "RESP hit -P 16 / redis-server" "$(paired "${samples[redis-proxy/16]}" "${samples[redis-server/16]}" 4)" "<=" 1.2
row "HTTP hit / bare hyper" "$(paired "${http_samples[proxy]}" "${http_samples[hyper]}" 4)" "<=" 1.15
row "RESP hit -P 1, 50 cache rules / none" "$(paired "${samples[proxy-rules/1]}" "${samples[redis-proxy/1]}" 4)" "<=" 1.05
row "RESP hit -P 1, hot keys on / off" "$(paired "${samples[redis-proxy/1]}" "${samples[proxy-no-hot-keys/1]}" 4)" "<=" 1.03
row "RESP hit -P 16, hot keys on / off" "$(paired "${samples[redis-proxy/16]}" "${samples[proxy-no-hot-keys/16]}" 4)" "<=" 1.03
row "RESP miss -P 1 / twemproxy" "$(paired "${samples[proxy-misses/1]}" "${samples[nutcracker/1]}" 4)" "<=" 1.0
row "HTTP hit / webdis" "$(paired "${http_samples[proxy]}" "${http_samples[webdis]}" 4)" "<=" 0.5
row "RSS per entry / Redis used_memory per key" "$(ratio "$per_entry_proxy" "$per_key_redis")" "<=" 1.0
printf '\nThroughput (requests/s, proxy over peer, median of per-round ratios; informative):\n'
printf '  %-44s %6s\n' "RESP hit -P 1 / redis-server" "$(paired "${samples[redis-proxy/1]}" "${samples[redis-server/1]}" 1)"
printf '  %-44s %6s\n' "RESP hit -P 16 / redis-server" "$(paired "${samples[redis-proxy/16]}" "${samples[redis-server/16]}" 1)"
printf '  %-44s %6s\n' "RESP hit -P 16 / nutcracker" "$(paired "${samples[redis-proxy/16]}" "${samples[nutcracker/16]}" 1)"
printf '  %-44s %6s\n' "RESP miss -P 1 / nutcracker" "$(paired "${samples[proxy-misses/1]}" "${samples[nutcracker/1]}" 1)"
printf '  %-44s %6s\n' "HTTP hit / bare hyper" "$(paired "${http_samples[proxy]}" "${http_samples[hyper]}" 1)"
printf '  %-44s %6s\n' "HTTP hit / webdis" "$(paired "${http_samples[proxy]}" "${http_samples[webdis]}" 1)"

# Hit ratio of the two cache policies (in-process, deterministic).
cargo bench --locked --quiet --bench hit_ratio

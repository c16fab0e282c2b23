#!/usr/bin/env bash
# make soak: mixed HTTP + RESP load against a small cache with constant churn,
# sampling the proxy's resident memory (RSS) and open file descriptors.
#
# Load, all at once for SOAK_SECONDS (default 300):
#   - wrk over HTTP, random keys out of 10,000;
#   - redis-benchmark over RESP, random keys, pipelined (-P 4);
#   - redis-benchmark over RESP reconnecting for every request (-k 0): connection churn.
# The cache holds 500 keys for 2 s, so entries are evicted and expire all the time.
#
# Prints RSS and fd count at start, end and maximum, and two verdicts: RSS levels
# off (its maximum over the second half is within 5% of its value at half time)
# and the fd count returns to its baseline after the load.
#
# Needs Debian packages redis-server, redis-tools and wrk (installed when root).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${SOAK_SECONDS:-300}
interval=${SOAK_INTERVAL:-5}

script=soak
source scripts/lib.sh
need_packages redis-server=redis-server redis-benchmark=redis-tools wrk=wrk

cargo build --release --locked --quiet
dir=target/soak
rm -rf "$dir" && mkdir -p "$dir"


redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" --logfile redis.log &
pids+=($!)
wait_port "$redis_port"
redis-benchmark -p "$redis_port" -t set -r 10000 -d 100 -n 200000 -c 20 -q > /dev/null

http_port=$(free_port)
resp_port=$(free_port)
RUST_LOG=warn target/release/redis-proxy --redis-url "redis://127.0.0.1:$redis_port" \
  --http-addr "127.0.0.1:$http_port" --resp-addr "127.0.0.1:$resp_port" --admin-addr 127.0.0.1:0 \
  --cache-capacity 500 --cache-ttl 2s > "$dir/proxy.log" 2>&1 &
proxy=$!
pids+=("$proxy")
wait_port "$http_port"
wait_port "$resp_port"

rss() { awk '/^VmRSS/ { print $2 }' "/proc/$proxy/status"; }
fds() { find "/proc/$proxy/fd" -mindepth 1 -maxdepth 1 | wc -l; }

cat > "$dir/random.lua" <<'LUA'
request = function()
  return wrk.format("GET", string.format("/key:%012d", math.random(0, 9999)))
end
LUA

# Warm up first, so the baseline includes what steady state keeps open: the pool's
# connections to Redis (up to --redis-pool-size) and the runtime's threads.
wrk -t1 -c20 -d5s -s "$dir/random.lua" "http://127.0.0.1:$http_port" > /dev/null 2>&1
timeout 5 redis-benchmark -p "$resp_port" -t get -r 10000 -c 20 -P 4 -l -q > /dev/null 2>&1 || true
sleep 3
base_rss=$(rss)
base_fds=$(fds)
echo "soak: ${seconds}s of mixed load; sampling every ${interval}s (baseline after a 5 s warm-up)"
wrk -t1 -c20 -d"${seconds}s" -s "$dir/random.lua" "http://127.0.0.1:$http_port" > "$dir/wrk.txt" 2>&1 &
pids+=($!)
timeout "$seconds" redis-benchmark -p "$resp_port" -t get -r 10000 -c 20 -P 4 -l -q > /dev/null 2>&1 &
pids+=($!)
timeout "$seconds" redis-benchmark -p "$resp_port" -t get -r 10000 -c 5 -k 0 -l -q > /dev/null 2>&1 &
pids+=($!)

samples=()
start=$SECONDS
while ((SECONDS - start < seconds)); do
  sleep "$interval"
  samples+=("$(rss) $(fds)")
  printf '  t=%4ss  rss=%6s KiB  fds=%4s\n' $((SECONDS - start)) ${samples[-1]}
done
sleep 3 # let the load generators' connections close
after_fds=$(fds)
end_rss=$(rss)

half=$((${#samples[@]} / 2))
mid_rss=$(echo "${samples[$half]}" | cut -d' ' -f1)
max_rss=$(printf '%s\n' "${samples[@]}" | cut -d' ' -f1 | sort -n | tail -1)
late_max=$(printf '%s\n' "${samples[@]:$half}" | cut -d' ' -f1 | sort -n | tail -1)
max_fds=$(printf '%s\n' "${samples[@]}" | cut -d' ' -f2 | sort -n | tail -1)
growth=$(awk -v a="$late_max" -v b="$mid_rss" 'BEGIN { printf "%.1f", (a - b) * 100 / b }')

echo
echo "requests: wrk: $(grep -E 'Requests/sec' "$dir/wrk.txt" | awk '{print $2}') req/s over HTTP; $(grep -cE 'Non-2xx' "$dir/wrk.txt" || true) wrk lines reporting non-2xx"
printf 'RSS KiB:  start %s  half-time %s  end %s  max %s  (growth over the second half: %s%%)\n' \
  "$base_rss" "$mid_rss" "$end_rss" "$max_rss" "$growth"
printf 'fds:      baseline %s  max %s  after load %s\n' "$base_fds" "$max_fds" "$after_fds"
verdict=0
if awk -v g="$growth" 'BEGIN { exit !(g <= 5) }'; then echo "RSS levels off: yes"; else echo "RSS levels off: NO"; verdict=1; fi
if ((after_fds <= base_fds)); then echo "fds back to baseline: yes"; else echo "fds back to baseline: NO"; verdict=1; fi
exit $verdict

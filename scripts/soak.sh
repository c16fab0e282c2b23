#!/usr/bin/env bash
# make soak: mixed HTTP + RESP load against a small cache with constant churn,
# sampling the proxy's resident memory (RSS) and open file descriptors.
#
# Load, all at once for SOAK_SECONDS (default 300):
#   - wrk over HTTP, random keys out of 10,000;
#   - redis-benchmark over RESP, random keys, pipelined (-P 4);
#   - redis-benchmark over RESP reconnecting for every request (-k 0): connection churn;
#   - redis-benchmark over RESP reading random 1 MB values out of 200 (large values);
#   - a stalled reader: MGETs of large values that it never reads, reconnecting
#     whenever the proxy closes it (output limit or write timeout);
#   - a stalled writer: 8 MB of a 16 MB request, then nothing, reconnecting
#     whenever the proxy cuts it off (request timeout).
# The cache holds 500 keys and 64 MB for 2 s, so entries are evicted and expire
# all the time.
#
# Prints RSS and fd count at start, end and maximum, and two verdicts: RSS levels
# off (its mean over the second half is within 5% of its mean over the first:
# with large values in flight RSS swings from one sample to the next, so halves
# are compared, not single samples) and the fd count returns to its baseline
# after the load.
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


start_redis "$dir" redis.log
redis-benchmark -p "$redis_port" -t set -r 10000 -d 100 -n 200000 -c 20 -q > /dev/null
# 200 values of 1 MB: big:000000000000 .. big:000000000199, as -r 200 names them.
python3 - "$redis_port" <<'PY'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
value = b"v" * (1 << 20)
for i in range(200):
    key = b"big:%012d" % i
    s.sendall(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(key), key, len(value), value))
got = b""
while got.count(b"+OK") < 200:
    got += s.recv(65536)
PY

http_port=$(free_port)
resp_port=$(free_port)
RUST_LOG=warn target/release/redis-proxy --redis-url "redis://127.0.0.1:$redis_port" \
  --http-addr "127.0.0.1:$http_port" --resp-addr "127.0.0.1:$resp_port" --admin-addr 127.0.0.1:0 \
  --cache-capacity 500 --cache-max-bytes 64mb --cache-ttl 2s --request-timeout 2s \
  --client-output-limit 32mb --client-write-timeout 2s > "$dir/proxy.log" 2>&1 &
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
timeout "$seconds" redis-benchmark -p "$resp_port" -r 200 -c 4 -l -q GET 'big:__rand_int__' > /dev/null 2>&1 &
pids+=($!)
# The stalled reader and the stalled writer.
timeout "$seconds" python3 - "$resp_port" <<'PY' > "$dir/stalled.log" 2>&1 &
import socket, sys, threading, time
port = int(sys.argv[1])
closed = {"reader": 0, "writer": 0}

def reader():
    while True:
        s = socket.create_connection(("127.0.0.1", port))
        keys = b" ".join(b"big:%012d" % (i % 200) for i in range(64))
        try:
            while True:
                s.sendall(b"MGET " + keys + b"\r\n")
                time.sleep(0.2)
        except OSError:
            closed["reader"] += 1

def writer():
    while True:
        s = socket.create_connection(("127.0.0.1", port))
        try:
            s.sendall(b"*2\r\n$3\r\nGET\r\n$16777216\r\n" + b"k" * (8 << 20))
            s.recv(4096)  # the proxy cuts the request off
        except OSError:
            pass
        closed["writer"] += 1

for role in (reader, writer):
    threading.Thread(target=role, daemon=True).start()
while True:
    time.sleep(10)
    print(closed, flush=True)
PY
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
mean() { cut -d' ' -f1 | awk '{ s += $1 } END { printf "%.0f", s / NR }'; }
early_mean=$(printf '%s\n' "${samples[@]:0:$half}" | mean)
late_mean=$(printf '%s\n' "${samples[@]:$half}" | mean)
max_fds=$(printf '%s\n' "${samples[@]}" | cut -d' ' -f2 | sort -n | tail -1)
growth=$(awk -v a="$late_mean" -v b="$early_mean" 'BEGIN { printf "%.1f", (a - b) * 100 / b }')
echo
echo "requests: wrk: $(grep -E 'Requests/sec' "$dir/wrk.txt" | awk '{print $2}') req/s over HTTP; $(grep -cE 'Non-2xx' "$dir/wrk.txt" || true) wrk lines reporting non-2xx"
echo "stalled clients cut off: $(tail -1 "$dir/stalled.log" 2>/dev/null)"
printf 'RSS KiB:  start %s  half-time %s  end %s  max %s  mean of each half %s, %s  (growth: %s%%)\n' \
  "$base_rss" "$mid_rss" "$end_rss" "$max_rss" "$early_mean" "$late_mean" "$growth"
printf 'fds:      baseline %s  max %s  after load %s\n' "$base_fds" "$max_fds" "$after_fds"
verdict=0
if awk -v g="$growth" 'BEGIN { exit !(g <= 5) }'; then echo "RSS levels off: yes"; else echo "RSS levels off: NO"; verdict=1; fi
if ((after_fds <= base_fds)); then echo "fds back to baseline: yes"; else echo "fds back to baseline: NO"; verdict=1; fi
exit $verdict

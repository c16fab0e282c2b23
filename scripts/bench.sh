#!/usr/bin/env bash
# make bench: cached GET over the Redis protocol, side by side in one run.
#
# Starts a redis-server, the proxy (release build) in front of it, and twemproxy
# (nutcracker) in front of the same Redis, loads 1,000 keys of 100-byte values,
# warms the proxy's cache, then runs redis-benchmark against each with the same
# parameters at -P 1 and -P 16, and prints throughput, p50/p99 and the ratios.
#
# Then compares the hit ratio of the lru and s3fifo cache policies on a Zipf
# stream with scans (benches/hit_ratio.rs).
#
# Needs Debian packages redis-server, redis-tools and nutcracker; installs the
# missing ones when run as root. Everything else stays under target/bench.
#
# Environment: BENCH_REQUESTS (per run, default 200000), BENCH_CLIENTS (50),
# BENCH_ROUNDS (3).
set -euo pipefail
cd "$(dirname "$0")/.."

requests=${BENCH_REQUESTS:-200000}
clients=${BENCH_CLIENTS:-50}
keys=1000
size=100

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v redis-benchmark >/dev/null || missing+=(redis-tools)
command -v nutcracker >/dev/null || [[ -x /usr/sbin/nutcracker ]] || missing+=(nutcracker)
if ((${#missing[@]})); then
  if [[ $(id -u) == 0 ]]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  else
    echo "bench: needs Debian packages: ${missing[*]} (sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
fi
nutcracker=$(command -v nutcracker || echo /usr/sbin/nutcracker)

cargo build --release --locked --quiet
dir=target/bench
rm -rf "$dir" && mkdir -p "$dir"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "bench: nothing listens on $1" >&2; exit 1; }

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" \
  --logfile redis.log &
pids+=($!)
wait_port "$redis_port"

proxy_port=$(free_port)
RUST_LOG=warn target/release/redis-proxy --redis-url "redis://127.0.0.1:$redis_port" \
  --http-addr 127.0.0.1:0 --resp-addr "127.0.0.1:$proxy_port" --cache-ttl 1h \
  --cache-capacity 100000 > "$dir/proxy.log" 2>&1 &
pids+=($!)
wait_port "$proxy_port"

nut_port=$(free_port)
cat > "$dir/nutcracker.yml" <<YML
bench:
  listen: 127.0.0.1:$nut_port
  hash: fnv1a_64
  distribution: ketama
  redis: true
  auto_eject_hosts: false
  server_connections: 1
  servers:
    - 127.0.0.1:$redis_port:1
YML
"$nutcracker" -c "$dir/nutcracker.yml" -o "$dir/nutcracker.log" -s "$(free_port)" &
pids+=($!)
wait_port "$nut_port"

# 1,000 keys of 100 bytes: key:000000000000 .. key:000000000999, as -r 1000 names them.
redis-benchmark -p "$redis_port" -t set -r "$keys" -d "$size" -n 50000 -c 20 -q > /dev/null
[[ $(redis-cli -p "$redis_port" dbsize) == "$keys" ]] || { echo "bench: seeding failed" >&2; exit 1; }
# Warm the proxy's cache so every measured GET is a hit.
redis-benchmark -p "$proxy_port" -t get -r "$keys" -n 20000 -c 20 -q > /dev/null

# bench NAME PORT PIPELINE -> "rps p50 p99"
bench() {
  # (proxies answer CONFIG GET with an error; redis-benchmark warns and goes on)
  redis-benchmark -p "$2" -t get -r "$keys" -d "$size" -c "$clients" -n "$requests" -P "$3" --csv 2>/dev/null \
    | awk -F, 'NR==2 { gsub(/"/, ""); print $2, $5, $7 }'
}

rounds=${BENCH_ROUNDS:-3}
targets=(redis-proxy redis-server nutcracker)
port_of() {
  case $1 in
    redis-proxy) echo "$proxy_port" ;;
    redis-server) echo "$redis_port" ;;
    nutcracker) echo "$nut_port" ;;
  esac
}

# Rounds interleave the targets, so that a slow moment of the shared machine
# falls on all of them alike; each figure is the median over the rounds.
declare -A samples
for ((round = 1; round <= rounds; round++)); do
  for pipeline in 1 16; do
    for target in "${targets[@]}"; do
      samples[$target/$pipeline]+="$(bench "$target" "$(port_of "$target")" "$pipeline")"$'\n'
    done
  done
done
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
column() { printf '%s' "${samples[$1]}" | awk -v c="$2" 'NF { print $c }' | median; }

printf '\nCached GET over RESP: redis-benchmark -t get -c %s -r %s -d %s -n %s, median of %s rounds\n\n' \
  "$clients" "$keys" "$size" "$requests" "$rounds"
printf '%-6s %-16s %12s %9s %9s\n' "-P" "target" "requests/s" "p50 ms" "p99 ms"
declare -A rps
for pipeline in 1 16; do
  for target in "${targets[@]}"; do
    rps[$target/$pipeline]=$(column "$target/$pipeline" 1)
    printf '%-6s %-16s %12s %9s %9s\n' "$pipeline" "$target" "${rps[$target/$pipeline]}" \
      "$(column "$target/$pipeline" 2)" "$(column "$target/$pipeline" 3)"
  done
done

ratio() { awk -v a="${rps[$1]}" -v b="${rps[$2]}" 'BEGIN { printf "%.2f", a / b }'; }
printf '\nRatios (same run):\n'
printf '  proxy / redis-server, -P 1:   %s  (target >= 1.0)\n' "$(ratio redis-proxy/1 redis-server/1)"
printf '  proxy / redis-server, -P 16:  %s  (target >= 0.6)\n' "$(ratio redis-proxy/16 redis-server/16)"
printf '  proxy / nutcracker,   -P 1:   %s\n' "$(ratio redis-proxy/1 nutcracker/1)"
printf '  proxy / nutcracker,   -P 16:  %s  (target >= 1.5)\n' "$(ratio redis-proxy/16 nutcracker/16)"

# Hit ratio of the two cache policies (in-process, deterministic).
cargo bench --locked --quiet --bench hit_ratio

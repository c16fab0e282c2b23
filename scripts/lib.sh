# Helpers shared by the bench scripts, scripts/soak.sh and scripts/run-cluster.sh. Source it after setting
# `script` to the caller's name (used in messages).

# Installs the Debian packages that provide missing commands, when root; else
# says what to install and exits. Arguments: COMMAND=PACKAGE pairs.
need_packages() {
  local missing=() pair
  for pair in "$@"; do
    command -v "${pair%%=*}" >/dev/null || [[ -x /usr/sbin/${pair%%=*} ]] || missing+=("${pair#*=}")
  done
  ((${#missing[@]})) || return 0
  if [[ $(id -u) == 0 ]]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  else
    echo "$script: needs Debian packages: ${missing[*]} (sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
}

# A loopback port that was free a moment ago.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits up to 5 s until something listens on loopback port $1.
wait_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "$script: nothing listens on $1" >&2
  exit 1
}

# start_redis DIR LOGFILE: a Redis on a free loopback port, without persistence,
# stopped when the script exits; sets redis_port and redis_pid.
start_redis() {
  redis_port=$(free_port)
  redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$1" \
    --logfile "$2" &
  redis_pid=$!
  pids+=("$redis_pid")
  wait_port "$redis_port"
}

# Background processes started with `pids+=($!)` are stopped when the script exits.
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

# --- measuring (the bench scripts) ---------------------------------------------

# CPU time of processes, all their threads, in clock ticks (utime + stime), summed.
ticks() {
  local sum=0 pid
  for pid in "$@"; do sum=$((sum + $(awk '{ print $14 + $15 }' "/proc/$pid/stat"))); done
  echo "$sum"
}
# Microseconds of CPU per request: ticks over a run / requests.
per_request() { awk -v t="$1" -v n="$2" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.3f", t / hz * 1e6 / n }'; }
# The median of the numbers on standard input, one a line.
median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
# paired SAMPLES_A SAMPLES_B COLUMN: the median over rounds of A's figure over
# B's in the same round, so that a slow round weighs on both sides alike.
paired() {
  paste <(printf '%s' "$1" | awk -v c="$3" 'NF { print $c }') \
    <(printf '%s' "$2" | awk -v c="$3" 'NF { print $c }') \
    | awk '{ print $1 / $2 }' | median | awk '{ printf "%.2f", $1 }'
}

# start_nutcracker DIR REDIS_PORT...: twemproxy in front of those Redises (a
# pool of one or more, fnv1a_64 and ketama, written to DIR/nutcracker.yml),
# one connection to each, as it is usually run; sets nut_port and nut_pid.
start_nutcracker() {
  local nutcracker dir=$1 port
  shift
  nutcracker=$(command -v nutcracker || echo /usr/sbin/nutcracker)
  nut_port=$(free_port)
  {
    printf 'bench:\n  listen: 127.0.0.1:%s\n  hash: fnv1a_64\n  distribution: ketama\n' "$nut_port"
    printf '  redis: true\n  auto_eject_hosts: false\n  server_connections: 1\n  servers:\n'
    for port in "$@"; do printf '    - 127.0.0.1:%s:1\n' "$port"; done
  } > "$dir/nutcracker.yml"
  "$nutcracker" -c "$dir/nutcracker.yml" -o "$dir/nutcracker.log" -s "$(free_port)" -a 127.0.0.1 &
  nut_pid=$!
  pids+=("$nut_pid")
  wait_port "$nut_port"
}

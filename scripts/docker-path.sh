#!/usr/bin/env bash
# The evaluator's path, for real: `make test` and `make run` with nothing but
# make, docker, Compose and coreutils on PATH, then `docker build` of the image.
# CI runs it after the native `make test` (see .ci/run).
#
#   scripts/docker-path.sh [STANDINS]
#
# STANDINS: a script that starts a Docker engine and provides the base images
# under their real names (../shared/docker/standins.sh where Docker Hub cannot be
# reached); skipped when not given. The checks, each timed:
#   1. make test, with `docker compose` (v2, BuildKit): the whole suite in a
#      container; its image is removed afterwards;
#   2. make run, with `docker compose` and with `docker-compose` (v1, classic
#      builder): Redis and the proxy come up, a key written to Redis is served
#      over HTTP and RESP on 127.0.0.1, Ctrl-C stops and removes everything and
#      make's own recipe exits 0;
#   3. docker build -f docker/Dockerfile -t redis-proxy . yields the runtime
#      image, whose entrypoint answers --help.
# Needs curl and redis-cli on the caller's PATH to play the client.
set -euo pipefail
cd "$(dirname "$0")/.."

rust_version=$(sed -n 's/^ARG RUST_VERSION=//p' docker/Dockerfile)
if [[ -n ${1:-} ]]; then
  "$1" "rust:${rust_version}-bookworm" debian:bookworm-slim redis:7-alpine
fi

evaluator_path=$(scripts/evaluator-path.sh "${TMPDIR:-/tmp}/redis-proxy-evaluator")
project=redis-proxy
compose_file=docker/docker-compose.yml

step() { printf '\n== docker path: %s\n' "$*"; }
elapsed() { printf '== docker path: %s took %ss\n' "$1" $((SECONDS - $2)); }

# 1. make test ------------------------------------------------------------------
step "make test (docker compose v2)"
start=$SECONDS
log=$(mktemp)
PATH=$evaluator_path make test 2>&1 | tee "$log"
# cargo test's summary lines, one per test binary: "test result: ok. N passed; …"
passed=$(awk '/^test result:/ { n += $4 } END { print n + 0 }' "$log")
rm -f "$log"
elapsed "make test ($passed tests passed)" "$start"
images=$(docker image ls --format '{{.Repository}}')
if grep -qx "${project}-tests\|${project}_tests" <<<"$images"; then
  echo "docker path: the test image was left behind" >&2
  exit 1
fi

# 2. make run -------------------------------------------------------------------
# run_check LABEL [VAR=VALUE...]: `make run` in its own process group (as a
# terminal runs it), a key served over both protocols, then Ctrl-C.
run_check() {
  local label=$1
  shift
  step "make run ($label)"
  local start=$SECONDS
  local log
  log=$(mktemp)
  # Job control gives make a process group of its own with SIGINT handled as
  # at a terminal (a plain background job would start with SIGINT ignored).
  set -m
  env PATH="$evaluator_path" "$@" make run >"$log" 2>&1 </dev/null &
  local pid=$!
  set +m
  local up=
  for _ in $(seq 600); do
    if curl -fsS -o /dev/null http://127.0.0.1:9090/readyz 2>/dev/null; then
      up=yes
      break
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 1
  done
  if [[ -z $up ]]; then
    cat "$log" >&2
    echo "docker path: make run ($label) did not come up" >&2
    kill -INT -- "-$pid" 2>/dev/null || true
    exit 1
  fi
  echo "up after $((SECONDS - start))s"
  local value="served by $label"
  env PATH="$evaluator_path" "$@" sh -c \
    "\${COMPOSE:-docker compose} -p $project -f $compose_file exec -T redis redis-cli set docker-path-key '$value'"
  local http resp
  http=$(curl -fsS http://127.0.0.1:8080/docker-path-key)
  resp=$(redis-cli -h 127.0.0.1 -p 6380 get docker-path-key)
  echo "HTTP: $http"
  echo "RESP: $resp"
  [[ $http == "$value" && $resp == "$value" ]] || {
    echo "docker path: the key was not served over both protocols" >&2
    kill -INT -- "-$pid"
    exit 1
  }
  kill -INT -- "-$pid" # Ctrl-C: the whole foreground process group
  local status=0
  wait "$pid" || status=$?
  # make itself dies of the SIGINT (as it does at a terminal); its recipe must
  # have stopped the containers and exited 0.
  if grep -q 'run-docker\] Error' "$log"; then
    cat "$log" >&2
    echo "docker path: make run ($label) failed after Ctrl-C" >&2
    exit 1
  fi
  if [[ -n $(docker ps -aq --filter "label=com.docker.compose.project=$project") ]]; then
    docker ps -a >&2
    echo "docker path: containers left behind after Ctrl-C" >&2
    exit 1
  fi
  rm -f "$log"
  elapsed "make run ($label, make exit $status after Ctrl-C)" "$start"
}
run_check "docker compose v2"
run_check "docker-compose v1, classic builder" COMPOSE=docker-compose DOCKER_BUILDKIT=0 COMPOSE_DOCKER_CLI_BUILD=0

# 3. docker build -----------------------------------------------------------------
step "docker build -f docker/Dockerfile -t redis-proxy ."
start=$SECONDS
PATH=$evaluator_path docker build -q -f docker/Dockerfile -t redis-proxy . >/dev/null
# The whole help is read before its first line is shown: `| head -1` would close
# the pipe early and fail `docker run` with a broken pipe.
help=$(PATH=$evaluator_path docker run --rm redis-proxy --help)
echo "${help%%$'\n'*}"
size=$(docker image inspect redis-proxy --format '{{.Size}}')
elapsed "docker build (image $((size / 1000000)) MB)" "$start"

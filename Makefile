# redis-proxy: build, test, run, measure.
#
#   make test   the whole suite: natively when cargo and redis-server are present,
#               else in containers when a Docker engine answers, else it says what is missing
#   make run    a working proxy (natively, or Redis + proxy with docker compose)
#   make help   every target
#
# Variables, as `make help` lists them:
#   ARGS               extra flags for the proxy in `make run`, `make run-cluster` and `make run-sentinel` (native)
#   CARGO              the cargo to build with (default: cargo)
#   COMPOSE            `docker compose` or `docker-compose` (default: whichever answers)
#   KEEP               1: keep the test image and containers after `make test` in Docker
#   PUBLISH_ADDR       the address Compose publishes ports on (default: 127.0.0.1)
#   CLUSTER_PORT       the first of the six ports of `make run-cluster`'s nodes (default: 7000)
#   SENTINEL_BASE_PORT the first of the five ports of `make run-sentinel`'s primary, replica and sentinels (default: 6400)
#   REDIS_PROXY_CLIENT_PASSWORD  passed to the proxy by `make run` in Docker
#   BENCH_ROUNDS       `make bench`: rounds per row (default: 3)
#   BENCH_REQUESTS     `make bench`: requests per redis-benchmark run (default: 200000)
#   BENCH_CLIENTS      `make bench`: redis-benchmark connections (default: 50)
#   BENCH_HTTP_SECONDS `make bench`: seconds per wrk run (default: 5)
#   BENCH_MEMORY_KEYS  `make bench`: keys in the memory row (default: 1000000)
#   BENCH_WORKERS      `make bench`: worker threads of the proxy and its HTTP peers (default: each one's own)
#   BENCH_PROXY        `make bench`: the proxy binary to measure (default: target/release/redis-proxy)
#   SOAK_SECONDS       `make soak`: how long (default: 300)
#   SOAK_INTERVAL      `make soak`: seconds between samples (default: 5)

CARGO ?= cargo
ARGS ?=
CLIENTS_STAMP := target/clients/.installed

# Docker: every Compose call runs under one project name, so that its containers
# and images never mix with another project's. KEEP=1 keeps the test image and
# containers after `make test-docker`.
COMPOSE_FILE := docker/docker-compose.yml
COMPOSE_PROJECT := redis-proxy
KEEP ?=

HAVE_CARGO := $(shell command -v $(CARGO) >/dev/null 2>&1 && echo yes)
HAVE_REDIS := $(shell command -v redis-server >/dev/null 2>&1 && echo yes)
HAVE_DOCKER = $(shell docker info >/dev/null 2>&1 && echo yes)
# `docker compose` (v2) when present, else `docker-compose` (v1); COMPOSE=... picks one.
COMPOSE ?= $(shell if docker compose version >/dev/null 2>&1; then echo "docker compose"; \
	elif command -v docker-compose >/dev/null 2>&1; then echo docker-compose; fi)
DC = $(COMPOSE) -p $(COMPOSE_PROJECT) -f $(COMPOSE_FILE)
DCC = $(COMPOSE) -p $(COMPOSE_PROJECT)-cluster -f docker/cluster-compose.yml

.DEFAULT_GOAL := help

.PHONY: help build lint fmt test test-native test-docker unit clients examples doc compose-check \
	run run-native run-docker run-cluster run-cluster-native run-cluster-docker run-sentinel bench soak clean

help: ## List the targets and the variables they read
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'
	@echo
	@echo "Variables (make VAR=value target, or in the environment):"
	@grep -E '^#   [A-Z_]+ ' $(MAKEFILE_LIST) | sed 's/^#   /  /'

build: ## Build the release binary (target/release/redis-proxy)
	$(CARGO) build --release --locked

lint: ## cargo fmt --check and clippy with warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

fmt: ## Format the code
	$(CARGO) fmt --all

test: ## Every test: native if cargo + redis-server, else in Docker, else fail
ifeq ($(HAVE_CARGO)$(HAVE_REDIS),yesyes)
	@$(MAKE) --no-print-directory test-native
else
	@if [ "$(HAVE_DOCKER)" = yes ]; then \
		$(MAKE) --no-print-directory test-docker; \
	else \
		echo "make test needs either cargo and redis-server (apt-get install redis-server)," >&2; \
		echo "or a running Docker engine with docker compose." >&2; \
		exit 1; \
	fi
endif

test-native: lint clients compose-check ## Lint, build everything, run unit + system tests, docs, examples
	@command -v redis-server >/dev/null && command -v redis-cli >/dev/null || { echo "make test-native: redis-server and redis-tools are needed (apt-get install redis-server)" >&2; exit 1; }
	@[ -x /usr/sbin/nutcracker ] || command -v nutcracker >/dev/null || { echo "make test-native: nutcracker is needed, the reference for sharded pools (apt-get install nutcracker)" >&2; exit 1; }
	$(CARGO) build --locked --all-targets
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		echo "$(CARGO) nextest run --locked"; \
		$(CARGO) nextest run --locked; \
	else \
		echo "$(CARGO) test --locked"; \
		$(CARGO) test --locked; \
	fi
	$(CARGO) test --locked --doc
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --locked

test-docker: ## The same suite inside a container (needs a Docker engine); removes its image after (KEEP=1 keeps it)
	@[ -n "$(COMPOSE)" ] || { echo "make test-docker: docker compose (or docker-compose) is needed" >&2; exit 1; }
	@status=0; \
	echo "$(DC) --profile test build tests"; \
	$(DC) --profile test build tests || status=$$?; \
	if [ $$status = 0 ]; then \
		echo "$(DC) --profile test run --rm tests"; \
		$(DC) --profile test run --rm tests || status=$$?; \
	fi; \
	if [ -z "$(KEEP)" ]; then \
		$(DC) --profile test down --rmi local --remove-orphans >/dev/null 2>&1 || true; \
	fi; \
	exit $$status

unit: ## Unit tests only (no Redis needed)
	$(CARGO) test --locked --lib

clients: $(CLIENTS_STAMP) ## Install the client libraries the tests use (redis-py, ioredis, node-redis)

$(CLIENTS_STAMP): tests/clients/requirements.txt tests/clients/package.json
	@command -v python3 >/dev/null && command -v npm >/dev/null || { echo "make clients: python3 and npm are needed for the client tests" >&2; exit 1; }
	python3 -m pip install --quiet --disable-pip-version-check --target target/clients/python -r tests/clients/requirements.txt
	cd tests/clients && npm install --silent --no-audit --no-fund --no-package-lock
	@mkdir -p $(dir $@) && touch $@

examples: ## Build the library examples
	$(CARGO) build --locked --examples

doc: ## Build the API docs (warnings are errors)
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --locked

compose-check: ## Validate the compose files without an engine (skipped without docker-compose)
	@if [ -n "$(COMPOSE)" ]; then \
		echo "$(DC) --profile test config -q"; \
		$(DC) --profile test config -q; \
		echo "$(DCC) config -q"; \
		$(DCC) config -q; \
	else \
		echo "compose-check: skipped (neither docker compose nor docker-compose is installed)"; \
	fi

run: ## Run the proxy: natively with cargo, else Redis + proxy with docker compose
ifeq ($(HAVE_CARGO),yes)
	@$(MAKE) --no-print-directory run-native
else
	@if [ "$(HAVE_DOCKER)" = yes ]; then \
		$(MAKE) --no-print-directory run-docker; \
	else \
		echo "make run needs cargo, or a running Docker engine with docker compose." >&2; exit 1; \
	fi
endif

run-native: build ## Run natively; starts a throwaway redis-server when none answers
	@scripts/run-local.sh target/release/redis-proxy $(ARGS)

run-docker: ## Redis and the proxy with docker compose on 127.0.0.1 (Ctrl-C stops and removes them)
	@[ -n "$(COMPOSE)" ] || { echo "make run-docker: docker compose (or docker-compose) is needed" >&2; exit 1; }
	@# The shell outlives Ctrl-C (Compose stops the containers on it), so that the
	@# containers are removed and the exit status is Compose's: non-zero when a
	@# build or a start fails, or when the proxy exits with an error.
	@stopped=; trap 'stopped=yes' INT TERM; status=0; \
	echo "$(DC) up --build --exit-code-from proxy"; \
	$(DC) up --build --exit-code-from proxy || status=$$?; \
	if [ -n "$$stopped" ]; then status=0; fi; \
	$(DC) down --remove-orphans >/dev/null 2>&1 || true; \
	exit $$status

run-cluster: ## A Redis Cluster (3 primaries, 3 replicas) and the proxy in cluster mode: natively, else with docker compose
ifeq ($(HAVE_CARGO)$(HAVE_REDIS),yesyes)
	@$(MAKE) --no-print-directory run-cluster-native
else
	@if [ "$(HAVE_DOCKER)" = yes ]; then \
		$(MAKE) --no-print-directory run-cluster-docker; \
	else \
		echo "make run-cluster needs cargo and redis-server, or a running Docker engine with docker compose." >&2; exit 1; \
	fi
endif

run-cluster-native: build ## Six local redis-servers on 7000-7005 and the proxy (data in target/cluster-run)
	@scripts/run-cluster.sh target/release/redis-proxy $(ARGS)

run-cluster-docker: ## The cluster and the proxy with docker compose on 127.0.0.1 (Ctrl-C stops and removes them)
	@[ -n "$(COMPOSE)" ] || { echo "make run-cluster-docker: docker compose (or docker-compose) is needed" >&2; exit 1; }
	@stopped=; trap 'stopped=yes' INT TERM; status=0; \
	echo "$(DCC) up --build --exit-code-from proxy"; \
	$(DCC) up --build --exit-code-from proxy || status=$$?; \
	if [ -n "$$stopped" ]; then status=0; fi; \
	$(DCC) down --remove-orphans >/dev/null 2>&1 || true; \
	exit $$status

run-sentinel: build ## A primary, a replica and three sentinels (6400-6404) and the proxy in sentinel mode (native: cargo and redis-server)
	@command -v redis-server >/dev/null || { echo "make run-sentinel needs redis-server (apt-get install redis-server)" >&2; exit 1; }
	@scripts/run-sentinel.sh target/release/redis-proxy $(ARGS)

bench: ## Benchmark hits, misses, memory, transparent and cluster modes against redis-server, twemproxy, webdis and bare hyper (ratios)
	scripts/bench.sh
	scripts/bench-forward.sh
	scripts/bench-cluster.sh
	scripts/bench-sharded.sh

soak: ## Mixed HTTP+RESP load with churn for SOAK_SECONDS (300), sampling RSS and fds
	scripts/soak.sh

clean: ## Remove build output
	$(CARGO) clean

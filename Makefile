# redis-proxy: build, test and run.
#
#   make test    lint, build everything, run unit and system tests (needs cargo, redis-server)
#   make run     a working proxy on this machine (starts a throwaway Redis if none answers)
#
# Variables: ARGS (extra flags for `make run`), CARGO.

CARGO ?= cargo
ARGS ?=

.DEFAULT_GOAL := help

CLIENTS_STAMP := target/clients/.installed

.PHONY: help build lint fmt test test-native unit run doc clean clients bench soak

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

build: ## Build the release binary (target/release/redis-proxy)
	$(CARGO) build --release --locked

lint: ## cargo fmt --check and clippy with warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

fmt: ## Format the code
	$(CARGO) fmt --all

test: test-native ## Lint, build, and run every test (unit + system)

test-native: lint clients
	@command -v redis-server >/dev/null || { echo "make test: redis-server and redis-tools are needed for the system tests (apt-get install redis-server)" >&2; exit 1; }
	$(CARGO) build --locked --all-targets
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		echo "$(CARGO) nextest run --locked --all-targets"; \
		$(CARGO) nextest run --locked --all-targets; \
	else \
		echo "$(CARGO) test --locked --all-targets"; \
		$(CARGO) test --locked --all-targets; \
	fi
	$(CARGO) test --locked --doc

clients: $(CLIENTS_STAMP) ## Install the client libraries the tests use (redis-py, ioredis, node-redis)

$(CLIENTS_STAMP): tests/clients/requirements.txt tests/clients/package.json
	@command -v python3 >/dev/null && command -v npm >/dev/null || { echo "make clients: python3 and npm are needed for the client tests" >&2; exit 1; }
	python3 -m pip install --quiet --disable-pip-version-check --target target/clients/python -r tests/clients/requirements.txt
	cd tests/clients && npm install --silent --no-audit --no-fund --no-package-lock
	@mkdir -p $(dir $@) && touch $@

unit: ## Unit tests only (no Redis needed)
	$(CARGO) test --locked --lib

bench: ## Benchmark cached GET against redis-server and twemproxy (ratios)
	scripts/bench.sh

soak: ## Mixed HTTP+RESP load with churn for SOAK_SECONDS (300), sampling RSS and fds
	scripts/soak.sh

run: build ## Run the proxy; starts a throwaway redis-server when none answers
	@scripts/run-local.sh target/release/redis-proxy $(ARGS)

doc: ## Build the API docs
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --locked

clean: ## Remove build output
	$(CARGO) clean

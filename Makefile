# The two commands for a new user: `make demo` and `make test`.
# Both install what is missing (Debian packages, as root or through sudo)
# and build from scratch. `make bench` runs the benchmarks.

SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)
export LANG := C.UTF-8
export LC_ALL := C.UTF-8
export ERL_AFLAGS := -kernel shell_history disabled

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PACKAGES := elixir erlang-dev erlang-src dnsmasq-base bind9 iproute2 procps python3-yaml openssl

.PHONY: test test-stress demo bench soak system-deps build rust-test rust-lint elixir-test clean

test: system-deps rust-lint rust-test elixir-test

demo: system-deps build
	MIX_ENV=dev mix run --no-start examples/demo.exs

bench: system-deps
	MIX_ENV=dev mix compile
	MIX_ENV=dev mix run --no-start bench/run.exs

soak: system-deps
	MIX_ENV=dev mix compile
	MIX_ENV=dev mix run --no-start bench/soak.exs
	MIX_ENV=dev mix run --no-start bench/churn.exs

system-deps:
	@missing=""; \
	for cmd in elixir erl dnsmasq named openssl ip; do command -v $$cmd >/dev/null 2>&1 || [ -x /usr/sbin/$$cmd ] || missing=1; done; \
	[ -f /usr/lib/erlang/usr/include/erl_nif.h ] || missing=1; \
	/usr/bin/python3 -c "import yaml" 2>/dev/null || missing=1; \
	if [ -n "$$missing" ]; then \
	  echo "Installing $(APT_PACKAGES) with apt-get"; \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $(APT_PACKAGES); \
	fi
	@command -v cargo >/dev/null || { echo "cargo not found: install a Rust toolchain (1.91 or newer), e.g. with rustup"; exit 1; }

# `make test` three times in a row while two CPU hogs take both cores and an
# unrelated epmd daemon listens on 4369; every process it starts is stopped
# by its PID, also when a run fails or is interrupted.
test-stress: system-deps
	@pids=""; \
	cleanup() { for p in $$pids; do kill $$p 2>/dev/null; done; wait 2>/dev/null; }; \
	trap cleanup EXIT INT TERM; \
	yes > /dev/null & pids="$$pids $$!"; \
	yes > /dev/null & pids="$$pids $$!"; \
	epmd -port 4369 & pids="$$pids $$!"; \
	for run in 1 2 3; do \
	  start=$$(date +%s); \
	  $(MAKE) --no-print-directory test || { echo "test-stress: run $$run failed"; exit 1; }; \
	  echo "test-stress: run $$run passed in $$(( $$(date +%s) - start )) s"; \
	done

build:
	MIX_ENV=dev mix compile

rust-lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings

rust-test:
	cargo test

elixir-test:
	MIX_ENV=test mix format --check-formatted
	MIX_ENV=test mix compile --warnings-as-errors
	MIX_ENV=test mix test

clean:
	rm -rf _build target priv/native

# The two commands for a new user: `make demo` and `make test`.
# Both install what is missing (Debian packages, as root or through sudo)
# and build from scratch. `make bench` runs the benchmarks.

SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)
export LANG := C.UTF-8
export LC_ALL := C.UTF-8
export ERL_AFLAGS := -kernel shell_history disabled
# The NIF's cargo build for every MIX_ENV of this checkout in one place (a
# dependency's default is under the application's _build/, see mix.exs).
export CARGO_TARGET_DIR ?= $(CURDIR)/target

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Debian's Erlang (erlang-dev erlang-src) only when there is no Erlang at all:
# an Erlang from asdf, kerl or source has its own NIF headers.
ERLANG_PACKAGES := erlang-dev erlang-src
APT_PACKAGES := elixir $(ERLANG_PACKAGES) dnsmasq-base bind9 iproute2 procps python3-yaml openssl gcc libc6-dev

.PHONY: test test-stress test-flakes test-matrix precompile demo bench bench-scale soak system-deps apt-packages build rust-test rust-lint elixir-test clean

test: system-deps rust-lint rust-test elixir-test

# `make test` on Debian trixie and forky (chroots, built once) and on the
# host, each on a clean clone of HEAD; SUITES="forky" and MATRIX_HOST=0
# narrow it (see .ci/test-matrix).
test-matrix:
	.ci/test-matrix

# For a release: the precompiled NIF of this host's target in
# _build/precompiled/, its SHA-256 in checksum-Elixir.DynamicSrv.Native.exs
# (PRECOMPILE_ARGS="--out DIR --checksum-file FILE" to write elsewhere).
precompile: system-deps
	mix dynamic_srv_nif.precompile $(PRECOMPILE_ARGS)

demo: system-deps build
	MIX_ENV=dev mix run --no-start examples/demo.exs

bench: system-deps
	MIX_ENV=dev mix compile
	MIX_ENV=dev mix run --no-start bench/run.exs

# Parts B and F of the benchmark at 50 and 100 nodes (about 8 GB of RAM for 100 VMs).
bench-scale: system-deps
	MIX_ENV=dev mix compile
	BENCH_PARTS=b,f BENCH_SIZES=50,100 MIX_ENV=dev mix run --no-start bench/run.exs

soak: system-deps
	MIX_ENV=dev mix compile
	MIX_ENV=dev mix run --no-start bench/soak.exs
	MIX_ENV=dev mix run --no-start bench/churn.exs

system-deps:
	@missing=""; \
	for cmd in elixir dnsmasq named openssl ip gcc; do command -v $$cmd >/dev/null 2>&1 || [ -x /usr/sbin/$$cmd ] || missing="$$missing $$cmd"; done; \
	[ -f /usr/include/stdio.h ] || missing="$$missing libc6-dev"; \
	/usr/bin/python3 -c "import yaml" 2>/dev/null || missing="$$missing python3-yaml"; \
	packages="$(filter-out $(ERLANG_PACKAGES),$(APT_PACKAGES))"; \
	if command -v erl >/dev/null 2>&1; then \
	  root=$$(erl -noshell -eval 'io:format("~s",[code:root_dir()]),halt().'); \
	  if [ ! -f "$$root/usr/include/erl_nif.h" ]; then \
	    [ "$$root" = /usr/lib/erlang ] || { echo "The Erlang in $$root has no usr/include/erl_nif.h: install its development headers"; exit 1; }; \
	    missing="$$missing erl_nif.h"; packages="$(APT_PACKAGES)"; \
	  fi; \
	else \
	  missing="$$missing erl"; packages="$(APT_PACKAGES)"; \
	fi; \
	if [ -n "$$missing" ]; then \
	  echo "Missing:$$missing; installing $$packages with apt-get"; \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $$packages; \
	fi
	@command -v cargo >/dev/null || { echo "cargo not found: install a Rust toolchain (1.91 or newer), e.g. with rustup"; exit 1; }

# `make test` three times in a row while two CPU hogs take both cores and an
# unrelated epmd daemon listens on 4369, with the tests tagged :stress (a
# 50-node shared start); every process it starts is stopped by its PID,
# also when a run fails or is interrupted.
test-stress: system-deps
	@pids=""; \
	cleanup() { for p in $$pids; do kill $$p 2>/dev/null; done; wait 2>/dev/null; }; \
	trap cleanup EXIT INT TERM; \
	yes > /dev/null & pids="$$pids $$!"; \
	yes > /dev/null & pids="$$pids $$!"; \
	epmd -port 4369 & pids="$$pids $$!"; \
	for run in 1 2 3; do \
	  start=$$(date +%s); \
	  DYNAMIC_SRV_STRESS=1 $(MAKE) --no-print-directory test || { echo "test-stress: run $$run failed"; exit 1; }; \
	  echo "test-stress: run $$run passed in $$(( $$(date +%s) - start )) s"; \
	done

# The ExUnit suite FLAKES_RUNS times (default 5), each with its own random
# seed, FLAKES_LOAD=1 under two CPU hogs and an unrelated epmd; prints a
# table of every test that failed in any run (see .ci/test-flakes).
test-flakes: system-deps
	.ci/test-flakes

# The Debian packages `make test` needs (.ci/test-matrix puts them in its chroots).
apt-packages:
	@echo $(APT_PACKAGES)

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
	DYNAMIC_SRV_TEST_ALL=1 MIX_ENV=test mix test --warnings-as-errors

clean:
	rm -rf _build target priv/native

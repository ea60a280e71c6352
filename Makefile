# One entry point for humans and CI. `make test` installs everything it needs.
SHELL := /bin/bash
PYTHON ?= python3
ENV_CACHE ?= $(HOME)/.cache/crs4_cassandra
REQ_HASH := $(shell sha256sum requirements-dev.txt | cut -c1-16)
VENV ?= $(ENV_CACHE)/venv-$(REQ_HASH)
BIN := $(VENV)/bin
export VIRTUAL_ENV := $(VENV)
export PATH := $(BIN):$(PATH)
export CARGO_TERM_COLOR := never
# Build outputs live outside the clone too: a fresh clone reuses the compiled
# dependencies (cargo's fingerprints decide what is stale).
export CARGO_TARGET_DIR ?= $(ENV_CACHE)/target
# Incremental compilation data of the debug builds (tests, clippy) would take
# tens of GB of the cache for rebuilds that CI never does.
export CARGO_INCREMENTAL := 0

# Apache Cassandra (jars from Maven Central) and toxiproxy (built with Go), for
# the tests and benchmarks: each in a cache keyed by its version.
CASSANDRA_VERSION := $(shell sed -n 's:.*<cassandra.version>\(.*\)</cassandra.version>.*:\1:p' testbed/pom.xml)
TOXIPROXY_VERSION := 2.12.0
export CRS4_CASSANDRA_HOME := $(ENV_CACHE)/cassandra-$(CASSANDRA_VERSION)
export CRS4_TOXIPROXY := $(ENV_CACHE)/toxiproxy-$(TOXIPROXY_VERSION)/bin/toxiproxy-server
# The Spark Cassandra Connector's jars (Maven Central), for the Spark test and
# example: spark.jars is every jar of this folder.
SPARK_CONNECTOR_VERSION := $(shell sed -n 's:.*<connector.version>\(.*\)</connector.version>.*:\1:p' testbed/spark/pom.xml)
export CRS4_SPARK_JARS := $(ENV_CACHE)/spark-cassandra-connector-$(SPARK_CONNECTOR_VERSION)

SRC ?=
DEMO_DIR ?= demo-data

# A wheel for older Linux distributions: `maturin build` on this machine links
# against its glibc and tags the wheel manylinux_2_34 or newer, which pip
# refuses on RHEL/Rocky 8 (glibc 2.28). `make wheel` links through zig against
# glibc 2.28's symbols instead. Its tools live in a virtualenv of their own,
# keyed by the hash of requirements-wheel.txt; tests/test_wheel.py installs the
# wheel into another one, with an older torch (requirements-compat.txt).
WHEEL_TOOLS ?= $(ENV_CACHE)/wheel-tools-$(shell sha256sum requirements-wheel.txt | cut -c1-16)
COMPAT_VENV ?= $(ENV_CACHE)/venv-compat-$(shell sha256sum requirements-compat.txt | cut -c1-16)
MANYLINUX := manylinux_2_28
WHEEL_TARGET := x86_64-unknown-linux-gnu
WHEEL_DIR ?= dist

PHASES := env servers lint test-rust test-tch test-python

.PHONY: help env servers cassandra toxiproxy spark-connector build wheel wheel-tools compat-env test test-rust test-tch test-python lint format demo bench clean

help:
	@echo "make demo    build, make (or take SRC=) an image folder, ingest it locally, read, train and evaluate"
	@echo "make test    lint + every Rust and Python test (fetches and starts Apache Cassandra and toxiproxy)"
	@echo "make bench   benchmarks (bench/README.md)"
	@echo "make wheel   a wheel for glibc 2.28 and newer (RHEL/Rocky 8), Python 3.10+, into $(WHEEL_DIR)/"

# The development environment (torch, DALI, drivers...) is several GB: it lives
# outside the clone, keyed by the hash of requirements-dev.txt, and is built
# from nothing when missing.
env: $(VENV)/.complete

# No prerequisite on requirements-dev.txt's mtime: the path already carries its
# content hash, and a fresh clone's newer mtime must not rebuild a good env.
$(VENV)/.complete:
	rm -rf $(VENV)
	mkdir -p $(ENV_CACHE)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	touch $@

# The extension module, built in release mode into the environment (editable).
build: env
	$(BIN)/maturin develop --release -q

# An explicit --target keeps these outputs (built with zig's C compiler and
# linker) apart from `make build`'s under the same CARGO_TARGET_DIR, so neither
# rebuilds the other's.
wheel: wheel-tools
	rm -f $(WHEEL_DIR)/crs4_cassandra-*-$(MANYLINUX)_x86_64.whl
	PATH=$(WHEEL_TOOLS)/bin:$$PATH VIRTUAL_ENV=$(WHEEL_TOOLS) $(WHEEL_TOOLS)/bin/maturin build \
		--release --locked --zig --compatibility $(MANYLINUX) --target $(WHEEL_TARGET) \
		--out $(WHEEL_DIR)
	$(WHEEL_TOOLS)/bin/auditwheel show $(WHEEL_DIR)/crs4_cassandra-*-$(MANYLINUX)_x86_64.whl

wheel-tools: $(WHEEL_TOOLS)/.complete
$(WHEEL_TOOLS)/.complete:
	rm -rf $(WHEEL_TOOLS)
	mkdir -p $(ENV_CACHE)
	$(PYTHON) -m venv $(WHEEL_TOOLS)
	$(WHEEL_TOOLS)/bin/python -m pip install -q -r requirements-wheel.txt
	touch $@

# No development tools in it: what a user installs beside the wheel. Prints
# its path last.
compat-env: $(COMPAT_VENV)/.complete
	@echo $(COMPAT_VENV)
$(COMPAT_VENV)/.complete:
	rm -rf $(COMPAT_VENV)
	mkdir -p $(ENV_CACHE)
	$(PYTHON) -m venv $(COMPAT_VENV)
	$(COMPAT_VENV)/bin/python -m pip install -q -r requirements-compat.txt
	touch $@

lint: env
	cargo fmt --all --check
	cargo clippy --workspace --exclude crs4-cassandra-tch --all-targets -q -- -D warnings
	$(TCH_ENV) cargo clippy -p crs4-cassandra-tch --no-deps --all-targets -q -- -D warnings
	$(BIN)/ruff check python tests bench examples testbed
	$(BIN)/ruff format --check python tests bench examples testbed
	$(BIN)/mypy

format: env
	cargo fmt --all
	$(BIN)/ruff format python tests bench examples testbed
	$(BIN)/ruff check --fix python tests bench examples testbed

test-rust:
	cargo test --workspace --exclude crs4-cassandra-python --exclude crs4-cassandra-tch -q

# Only rust/tch links libtorch: the one inside the environment's torch wheel.
# torch-sys asks the environment's Python where torch is only when one of the
# variables it watches changes, and it does not watch which Python that is:
# LIBTORCH_USE_PYTORCH (any value turns it on) names the environment, so a
# new environment makes torch-sys look again instead of linking a stale path.
TCH_ENV = LIBTORCH_USE_PYTORCH=$(VENV) LD_LIBRARY_PATH=$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/torch/lib$${LD_LIBRARY_PATH:+:$$LD_LIBRARY_PATH}

# Its cross-language resume test runs the installed Python package.
test-tch: build
	$(TCH_ENV) PYTHON=$(BIN)/python cargo test -p crs4-cassandra-tch -q

servers: cassandra toxiproxy spark-connector

cassandra: $(CRS4_CASSANDRA_HOME)/.complete
$(CRS4_CASSANDRA_HOME)/.complete:
	rm -rf $(CRS4_CASSANDRA_HOME)
	mvn -q -B -f testbed/pom.xml dependency:copy-dependencies -DincludeScope=runtime \
		-DoutputDirectory=$(CRS4_CASSANDRA_HOME)/lib
	touch $@

spark-connector: $(CRS4_SPARK_JARS)/.complete
$(CRS4_SPARK_JARS)/.complete:
	rm -rf $(CRS4_SPARK_JARS)
	mvn -q -B -f testbed/spark/pom.xml dependency:copy-dependencies -DincludeScope=runtime \
		-DoutputDirectory=$(CRS4_SPARK_JARS)
	touch $@

toxiproxy: $(CRS4_TOXIPROXY)
$(CRS4_TOXIPROXY):
	mkdir -p $(dir $@)
	GOBIN=$(dir $@) go install github.com/Shopify/toxiproxy/v2/cmd/server@v$(TOXIPROXY_VERSION)
	mv $(dir $@)server $@

test-python: build servers
	$(BIN)/python -m pytest -q

# Every phase, each timed.
test:
	@for p in $(PHASES); do s=$$(date +%s); $(MAKE) --no-print-directory $$p || exit 1; \
		echo "== make $$p: $$(( $$(date +%s) - s )) s"; done

demo: build
	$(BIN)/python -m crs4_cassandra.demo --workdir $(DEMO_DIR) $(if $(SRC),--src $(SRC))

bench: build servers
	$(BIN)/python -m bench

clean:
	cargo clean
	rm -rf $(DEMO_DIR) bench/data

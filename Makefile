# Ember's two entry points: `make run` (server + demo) and `make test`.
# Both depend on `make setup`, which is idempotent and installs everything a
# fresh Debian 12 machine needs (run as root).

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export EMBER_DATA_DIR ?= /var/lib/ember
export EMBER_SYSTEM_DIR ?= /var/lib/ember/system
APT_PACKAGES := qemu-system-x86 qemu-utils busybox-static erofs-utils e2fsprogs kmod cpio \
	zstd skopeo umoci docker-registry nftables iproute2 gcc libc6-dev make curl debootstrap \
	wrk iperf3 conntrack libssl-dev etcd-server systemd

.PHONY: setup run clean-demo test lint typecheck unit clean-venv

setup: $(VENV)/.installed $(EMBER_SYSTEM_DIR)/.prepared

# Re-checked when this file (the package list) changes.
.apt-installed: Makefile
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "setup: installing apt packages: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	@touch $@

$(VENV)/.installed: pyproject.toml .apt-installed
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

# Guest kernel (apt-get download), guest agent (gcc -static) and initrd.
$(EMBER_SYSTEM_DIR)/.prepared: $(VENV)/.installed $(shell find ember/guest ember/system -type f 2>/dev/null) ember/builds/rootfs.py
	$(BIN)/python -m ember.system prepare --system-dir $(EMBER_SYSTEM_DIR)
	@touch $@

run: setup
	$(BIN)/python -m ember.demo

# Everything `make run` made: the demo VM, its volume, image and ingress, Caddy, the
# ember-demo namespace with its bridge and nft table (stop `make run` first).
clean-demo: $(VENV)/.installed
	$(BIN)/python -m ember.demo clean

lint: setup
	$(BIN)/ruff check ember tests bench
	$(BIN)/ruff format --check ember tests bench

typecheck: setup
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/pytest -q

# The fast tier: no VM and no `ember serve` process (fakes in ember/testkit/fakevm.py).
unit:
	$(BIN)/pytest -q -m "not vm and not server"

clean-venv:
	rm -rf $(VENV) .apt-installed

# edgefleet — `make demo` and `make test` do all set-up on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
export CONTAINERS_CONF := $(CURDIR)/deploy/podman/containers.conf

.PHONY: install system-deps qemu test lint demo bench clean

install: system-deps qemu $(VENV)/.installed

system-deps:
	@scripts/install-system-deps.sh

# arm64 emulation (qemu binfmt) for arm64 image builds and the emulated arm64 device.
qemu:
	@scripts/install-qemu.sh

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev]'
	touch $@

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: install lint
	$(VENV)/bin/pytest

# `make demo DEMO_ARGS=--keep` keeps the stack and its dashboard up at the end.
demo: install
	$(VENV)/bin/edgefleet demo $(DEMO_ARGS)

# Every benchmark with quick settings; BENCH="model_server rollout" picks some,
# BENCH_ARGS=--full uses each benchmark's own defaults (bench/__main__.py).
bench: install
	$(PY) -m bench $(BENCH_ARGS) $(BENCH)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

# The local stack in the background (docs/local-stack.md).
.PHONY: up down
up: install
	$(VENV)/bin/edgefleet up

down:
	$(VENV)/bin/edgefleet down

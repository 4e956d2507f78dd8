# Two commands do all set-up: `make demo` (run the example study) and `make test`.
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: install browser demo test lint clean

install: $(INSTALLED)

# torch is pinned in pyproject.toml and installed in the same command as everything else.
$(INSTALLED): pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --editable '.[dev]'
	touch $@

## Start the service on the embedded defaults (SQLite file, local Ray, offline MiniLM), submit
## the example study over REST, follow it to the end and print the best configuration.
demo: $(INSTALLED)
	bash examples/demo.sh

## Headless Chromium for the dashboard test, from the system's packages unless already there.
browser:
	command -v chromium >/dev/null || { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

## Lint and run the whole test suite (slow end-to-end tests included), in two pytest workers,
## a test file per worker at a time (most of the suite waits on processes, Ray and HTTP).
test: $(INSTALLED) browser lint
	$(BIN)/pytest --numprocesses 2 --dist loadfile

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .hpo hpo.db hpo.db-shm hpo.db-wal .hpo-demo-server.log

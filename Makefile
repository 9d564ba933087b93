# Kizuna: `make up` runs the ecosystem locally, `make test` runs the whole suite.
# Both install what is missing first (uv from PyPI, the workspace, Chromium from Debian).

SHELL := /bin/bash
.DEFAULT_GOAL := help
# uv from PATH, else the uv wheel from PyPI run as `python3 -m uv` (no shell profile changes).
UV := $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
PY := .venv/bin/python
export UV_LINK_MODE ?= copy
# Bytecode is compiled once at install and written on first import: a shell that sets
# PYTHONDONTWRITEBYTECODE would otherwise make every service process (the suite starts hundreds)
# compile FastAPI, SQLAlchemy, gRPC and the rest from source, about 2 s of CPU each.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: new-service help install up test test-fast lint fmt typecheck proto proto-check bench clean chromium test-tools

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

.venv/.synced: pyproject.toml uv.lock libs/*/pyproject.toml services/*/pyproject.toml
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	$(UV) sync --frozen --all-packages --compile-bytecode
	@touch $@

install: .venv/.synced ## install uv and the workspace (idempotent)

up: install ## run the whole ecosystem locally (Ctrl-C stops it)
	@exec $(PY) -m kizuna.kit.devstack

# Test files run in parallel (pytest-xdist), each file whole in one worker so its module-scoped
# stacks start once; every worker has its own nats-server, data dirs and uniquely named databases.
# Files go out longest first (the `long` marker; xdist would otherwise reorder them by test count,
# which left the longest browser file to start last and run alone).
# TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 4
PYTEST_PARALLEL := -n $(TEST_WORKERS) $(if $(filter 0,$(TEST_WORKERS)),,--dist loadfile --no-loadscope-reorder)

test: install test-tools ## the whole suite against real NATS, PostgreSQL, gRPC, HTTP
	$(PY) -m pytest -q $(PYTEST_PARALLEL) $(PYTEST_ARGS)

test-fast: install ## the suite without the slow end-to-end journeys
	$(PY) -m pytest -q -m "not slow" $(PYTEST_PARALLEL) $(PYTEST_ARGS)

lint: install node_modules ## ruff (checks and formatting), buf lint, proto drift
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	npx --no-install buf lint proto
	$(PY) proto/generate.py --check

# mypy, strict (pyproject's [tool.mypy]), on the kit and every package under services/*/src, then on
# the tests: a test module is named by its path from the root (`services.shop.tests.conftest`), so the
# conftest.py files do not clash and one run takes every test folder.
empty :=
space := $(empty) $(empty)
SERVICE_PACKAGES := $(notdir $(patsubst %/__init__.py,%,$(wildcard services/*/src/*/__init__.py)))
TEST_DIRS := $(wildcard libs/*/tests services/*/tests) tests
typecheck: install ## mypy strict on the kit, every service and the tests
	MYPYPATH=$(subst $(space),:,$(wildcard services/*/src)) $(PY) -m mypy -p kizuna.kit $(addprefix -p ,$(SERVICE_PACKAGES))
	MYPYPATH=$(subst $(space),:,$(wildcard services/*/src)) $(PY) -m mypy $(TEST_DIRS)

fmt: install
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

proto: install ## regenerate libs/contracts from proto/
	$(PY) proto/generate.py

proto-check: install ## fail when libs/contracts is stale
	$(PY) proto/generate.py --check

node_modules: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

new-service: install ## a new service from the kit: make new-service name=bookstore [label="Book Store"]
	@test -n "$(name)" || { echo "usage: make new-service name=<service> [label=\"Shown name\"]" >&2; exit 2; }
	$(PY) -m kizuna.kit.scaffold "$(name)" $(if $(label),--label "$(label)")
	$(UV) sync --all-packages
	@touch .venv/.synced

bench: install ## benchmarks (numbers, not tests)
	$(PY) bench/run.py

clean:
	rm -rf .data .pytest_cache

test-tools:: chromium node_modules ## tools the suite needs beyond the workspace: Chromium, axe-core (extended by mk/*.mk)

# Debian's Chromium for the browser tests (Playwright drives it; no browser download), and a Japanese
# font so the screenshots of Japanese pages show the text rather than empty boxes.
chromium: ## Debian's Chromium and a Japanese font for the browser tests
	@{ command -v chromium >/dev/null 2>&1 && dpkg -s fonts-noto-cjk >/dev/null 2>&1; } || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium fonts-noto-cjk; }

-include mk/*.mk

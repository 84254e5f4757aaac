# Tripkey: two commands matter — `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# System packages the tests use for real: PostgreSQL server, auditd (audit sensor), and for the
# tray: Xvfb, a system-tray host (trayer) and xdotool; for the packaging tests: wixl/msitools (MSI), rpm;
# for the fleet simulation (bench/fleet and its small test): HAProxy as the replicas' load balancer.

.PHONY: demo test test-all lint typecheck system-deps bench bench-fleet clean

$(STAMP): pyproject.toml
	@# Debian splits venv/ensurepip into python3-venv: install it when missing (root + apt).
	@$(PYTHON) -c "import ensurepip, venv" 2>/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null; \
	  else echo "error: $(PYTHON) cannot create virtual environments: install python3-venv"; exit 1; fi; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# Installs what the tests need from Debian when we can (root + apt); otherwise the
# fixtures that need a missing part skip with the reason.
system-deps:
	@missing=""; \
	command -v pg_ctlcluster >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v auditctl >/dev/null 2>&1 || missing="$$missing auditd"; \
	command -v Xvfb >/dev/null 2>&1 || missing="$$missing xvfb"; \
	command -v trayer >/dev/null 2>&1 || missing="$$missing trayer"; \
	command -v xdotool >/dev/null 2>&1 || missing="$$missing xdotool"; \
	command -v wixl >/dev/null 2>&1 || missing="$$missing wixl"; \
	command -v msiinfo >/dev/null 2>&1 || missing="$$missing msitools"; \
	command -v rpmbuild >/dev/null 2>&1 || missing="$$missing rpm"; \
	command -v haproxy >/dev/null 2>&1 || missing="$$missing haproxy"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing system packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "warning: missing$$missing (need root + apt to install); tests that need them will skip"; \
	  fi; \
	fi

demo: $(STAMP)
	$(BIN)/tripkey demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m tools.typecheck

# pytest exit code 5 means no test ran: that is a failure, never a pass.
test: system-deps $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m tools.typecheck
	$(BIN)/python -m pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: no tests ran"; exit 1; fi; exit $$rc

# The slow tests include a real PyInstaller build: install the packaging extra first.
test-all: system-deps $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,package]'
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m tools.typecheck
	$(BIN)/python -m pytest -m '' ; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: no tests ran"; exit 1; fi; exit $$rc

typecheck: $(STAMP)
	$(BIN)/python -m tools.typecheck

bench: $(STAMP)
	$(BIN)/python -m bench

# 100,000 simulated devices against issuer replicas behind HAProxy on PostgreSQL (a few minutes).
bench-fleet: system-deps $(STAMP)
	$(BIN)/python -m bench.fleet

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .mypy_cache

# Set-up and everyday commands. `make run` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch goes in first: on a CPU machine this exact version is the CPU wheel. GPU users override
# TORCH_INDEX (see README) so that pip takes the CUDA build instead.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck unit bench clean-venv sysdeps

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# make installs Python packages only. The opt-in train.onednn_products needs the system's
# oneDNN 2.x, which you install yourself (docs/configuration.md).
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

# System packages the tests drive: Debian's Chromium (the dashboard's and the extension's browser
# tests, through Playwright), Tesseract (OCR of imported images) and Node.js (the extension's
# JavaScript unit tests). Installed only where missing;
# without root or apt-get, make says what to install and the tests that need them are skipped.
SYSTEM_PACKAGES := chromium tesseract-ocr tesseract-ocr-eng nodejs
sysdeps:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else \
	    echo "selftune: these system packages are missing (install them as root): $$missing"; \
	  fi; \
	fi

run: $(STAMP)
	$(BIN)/selftune serve

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

test: sysdeps lint typecheck
	$(BIN)/python -m pytest -q --durations=15

unit: $(STAMP)
	$(BIN)/python -m pytest -q -m "not e2e"

bench: $(STAMP)
	$(BIN)/python -m bench

clean-venv:
	rm -rf $(VENV)

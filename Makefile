# Set-up and everyday commands. `make run` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch goes in first: on a CPU machine this exact version is the CPU wheel. GPU users override
# TORCH_INDEX (see README) so that pip takes the CUDA build instead.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
STAMP := $(VENV)/.installed
ONEDNN_STAMP := $(VENV)/.onednn

.PHONY: run test lint typecheck unit bench clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Optional: oneDNN 2.x from the system (Debian/Ubuntu's libdnnl2) gives bf16 training its
# products' float32 results (src/selftune/training/onednn.py). Installed where make runs as root
# with apt-get; elsewhere a line says how, and training rounds those results to bf16.
$(ONEDNN_STAMP): | $(BIN)/python
	@if /sbin/ldconfig -p 2>/dev/null | grep -q 'libdnnl\.so\.2 '; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libdnnl2 >/dev/null) \
	    || echo "note: could not install libdnnl2; bf16 training rounds its products' results"; \
	else echo "note: for bf16 training's float32 product results, install oneDNN 2.x" \
	  "(Debian/Ubuntu: sudo apt-get install libdnnl2)"; fi
	touch $@

$(STAMP): pyproject.toml | $(BIN)/python $(ONEDNN_STAMP)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/selftune serve

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/python -m pytest -q

unit: $(STAMP)
	$(BIN)/python -m pytest -q -m "not e2e"

bench: $(STAMP)
	$(BIN)/python -m bench

clean-venv:
	rm -rf $(VENV)

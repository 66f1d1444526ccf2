# Two entry points for a fresh machine: `make demo` and `make test`.
# Each creates .venv and installs what it needs; torch==2.13.0 is installed first so that
# pip picks the CPU wheel instead of a multi-GB CUDA build (pyproject asks only torch>=2.4).
# Every other package is held at the exact version in constraints.txt, so an upstream release
# cannot change what `make test` means; `make test-latest` runs the suite on the newest releases
# in .venv-latest, and `make constraints` rewrites constraints.txt from that environment.
PY ?= python3
VENV := .venv
LATEST := .venv-latest
CONSTRAINTS := constraints.txt
EXTRAS := .[dev,hf,triton,ray]
BIN := $(VENV)/bin
TORCH_PIN ?= torch==2.13.0
OUT ?= runs/demo

.PHONY: demo test test-latest constraints lint clean venv

$(BIN)/activate:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_PIN)

$(VENV)/.installed: $(BIN)/activate pyproject.toml $(CONSTRAINTS)
	$(BIN)/pip install --quiet -c $(CONSTRAINTS) -e '$(EXTRAS)' $(TORCH_PIN)
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(BIN)/ffnlab compare --preset quick --out $(OUT)

test: venv
	$(BIN)/lint-imports --no-cache
	TRITON_INTERPRET=1 $(BIN)/python -m pytest -q

# The newest release of every dependency (torch stays at the CPU wheel): what the next refresh
# of constraints.txt would bring. A failure here is a report about upstream, not about `make test`.
$(LATEST)/.installed: pyproject.toml
	rm -rf $(LATEST)
	$(PY) -m venv $(LATEST)
	$(LATEST)/bin/pip install --quiet --upgrade pip
	$(LATEST)/bin/pip install --quiet $(TORCH_PIN)
	$(LATEST)/bin/pip install --quiet --upgrade -e '$(EXTRAS)' $(TORCH_PIN)
	touch $@

test-latest: $(LATEST)/.installed
	$(LATEST)/bin/pip freeze --exclude-editable | diff $(CONSTRAINTS) - | grep '^[<>] [^#]' || true
	$(LATEST)/bin/lint-imports --no-cache
	TRITON_INTERPRET=1 $(LATEST)/bin/python -m pytest -q

constraints: $(LATEST)/.installed
	{ sed -n '/^#/p' $(CONSTRAINTS); $(LATEST)/bin/pip freeze --exclude-editable \
	  | sed 's/^torch==\([0-9.]*\)+cpu$$/torch==\1/'; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)
	@echo "constraints.txt rewritten from $(LATEST); run make test, then commit it"

lint: venv
	$(BIN)/ruff check src tests
	$(BIN)/lint-imports --no-cache

clean:
	rm -rf $(VENV) $(LATEST) runs build *.egg-info src/*.egg-info

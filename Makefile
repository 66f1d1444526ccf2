# Two entry points for a fresh machine: `make demo` and `make test`.
# Each creates .venv and installs what it needs; torch==2.13.0 is installed first so that
# pip picks the CPU wheel instead of a multi-GB CUDA build (pyproject asks only torch>=2.4).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_PIN ?= torch==2.13.0
OUT ?= runs/demo

.PHONY: demo test lint clean venv

$(BIN)/activate:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_PIN)

$(VENV)/.installed: $(BIN)/activate pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev,hf,triton,ray]' $(TORCH_PIN)
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(BIN)/ffnlab compare --preset quick --out $(OUT)

test: venv
	$(BIN)/lint-imports --no-cache
	TRITON_INTERPRET=1 $(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check src tests
	$(BIN)/lint-imports --no-cache

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info

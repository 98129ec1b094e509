# neuroal-onnx: setup, build, test and demo. Every large file is fetched from a package registry
# into the git-ignored .cache/ folder; nothing large is committed.

CACHE    := .cache
VENV     := $(CACHE)/venv
PYTHON   := $(VENV)/bin/python
# The venv's make target: a stamp written once pip has installed the requirements. $(PYTHON) itself
# is a link to the system interpreter, whose timestamp is not ours to touch.
VENV_OK  := $(VENV)/.installed
ORT_LIB  := $(CACHE)/ort/lib/libonnxruntime.so
FIXTURES := $(CACHE)/fixtures
BIN      := target/release/neuroal-onnx

.PHONY: setup demo-setup fixtures build test lint demo bench clean

## setup: Python venv for the fixture generator, ONNX Runtime, and every fixture.
setup: $(ORT_LIB) fixtures browser xz

## xz: packs and unpacks the GPU check's parts (scripts/gpu-check.sh, tests/it/gpu_check.rs).
.PHONY: xz
xz:
	command -v xz >/dev/null || (apt-get update -qq && apt-get install -y -qq xz-utils)

## browser: Debian's chromium, which the HTML report's test loads the report in.
.PHONY: browser
browser:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

$(VENV_OK): fixtures/requirements.txt
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -r fixtures/requirements.txt
	touch $@

$(ORT_LIB): scripts/fetch-ort.sh
	scripts/fetch-ort.sh $(CACHE)/ort

# NVRTC (PyPI nvidia-cuda-nvrtc) compiles the CUDA kernels to PTX with no GPU; tests/it/kernels.rs needs it.
NVRTC_LIB := $(CACHE)/nvrtc/lib/libnvrtc.so.13
setup: $(NVRTC_LIB)

$(NVRTC_LIB): scripts/fetch-nvrtc.sh
	scripts/fetch-nvrtc.sh $(CACHE)/nvrtc

# Older ONNX Runtimes the build accepts (Cargo.toml's api-19): 1.19.2, the oldest (older wheels have no
# separate library), and 1.30.0; tests/it/ort_versions.rs checks that they prune to the weights of 1.32.
ORT_LIB_1_19 := $(CACHE)/ort-1.19/lib/libonnxruntime.so
ORT_LIB_1_30 := $(CACHE)/ort-1.30/lib/libonnxruntime.so
setup: $(ORT_LIB_1_19) $(ORT_LIB_1_30)

$(ORT_LIB_1_19): scripts/fetch-ort.sh
	ORT_VERSION=1.19.2 scripts/fetch-ort.sh $(CACHE)/ort-1.19

$(ORT_LIB_1_30): scripts/fetch-ort.sh
	ORT_VERSION=1.30.0 scripts/fetch-ort.sh $(CACHE)/ort-1.30

## setup-gpu: onnxruntime-gpu with its CUDA provider and the NVIDIA CUDA 13 / cuDNN 9 libraries from
## PyPI in .cache/ort-gpu (about 1.6 GB of downloads; docs/gpu.md). Not part of setup or test.
.PHONY: setup-gpu
setup-gpu:
	scripts/fetch-ort-gpu.sh $(CACHE)/ort-gpu

## fixtures: tiny models in every exporter convention, SmolLM2-135M converted from its GGUF, Austen texts.
fixtures: $(VENV_OK)
	$(PYTHON) fixtures/generate.py $(FIXTURES)

build:
	cargo build --release

lint:
	cargo fmt --all -- --check
	cargo clippy --release --all-targets -- -D warnings
	scripts/module-graph.sh --check >/dev/null

## test: set up and run every test (unit, CLI, real model), plus formatting and lints.
test: setup lint
	cargo test --release

## test-big: the 4.5 GiB model: pruned with bounded memory, loaded back (4 min, 10 GB of free disk
## under target/tmp). Not part of `make test`.
.PHONY: test-big
test-big: setup
	cargo test --release --test it big_model -- --ignored --nocapture

## bench-7b: a whole Wanda job on a model of LLaMA-2-7B's shape (13.5 GB of fp16, generated into
## .cache/fixtures/llama7b): wall time and peak memory (about 15 min, 28 GB of free disk). Not part of `make bench`.
.PHONY: bench-7b
bench-7b: setup build
	scripts/bench-7b.sh

## demo-setup: only what the demo needs: ONNX Runtime, the generator's venv, SmolLM2 and the Austen texts.
demo-setup: $(ORT_LIB) $(VENV_OK)
	$(PYTHON) fixtures/generate.py $(FIXTURES) --only smollm2 austen

## demo: SmolLM2-135M pruned to 70% with Wanda, uniform against NeuroAL, perplexity on held-out Persuasion.
demo: demo-setup build
	scripts/demo.sh

## bench: the CPU mask path, the evaluation arithmetic and the re-fit against ADMM (criterion), one Wanda pass on SmolLM2 (stage times, peak RSS), NeuroAL search vs final pass,
## the headline command with no other flag (stage times, peak RSS), and whole jobs' peak memory.
bench: setup build
	cargo bench --bench masks
	cargo bench --bench evaluation
	cargo bench --bench reconstruct
	scripts/bench-wanda.sh
	scripts/bench-search.sh
	scripts/bench-default.sh
	scripts/bench-memory.sh

## fuzz: libFuzzer on the loader, external data, discovery and the partition (fuzz/README.md);
## FUZZ_TARGET=token_ids or task_file fuzzes the --calib token-id and --task-file readers instead.
## FUZZ_SECONDS=120 by default. Stable Rust: RUSTC_BOOTSTRAP=1 lets cargo fuzz pass -Zsanitizer.
## Not part of `make test`.
FUZZ_TARGET    ?= load_model
FUZZ_SECONDS   ?= 120
FUZZ_SANITIZER ?= address
# Per target: the extra input folders and the dictionary.
FUZZ_INPUTS_load_model := $(CURDIR)/tests/fuzz-regressions
FUZZ_DICT_load_model   := $(CURDIR)/fuzz/load_model.dict
FUZZ_DICT_token_ids    := $(CURDIR)/fuzz/json.dict
FUZZ_DICT_task_file    := $(CURDIR)/fuzz/json.dict
.PHONY: fuzz
fuzz:
	command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
	mkdir -p fuzz/corpus/$(FUZZ_TARGET)
	cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer $(FUZZ_SANITIZER) $(FUZZ_TARGET) \
		$(CURDIR)/fuzz/corpus/$(FUZZ_TARGET) $(CURDIR)/fuzz/seeds/$(FUZZ_TARGET) $(FUZZ_INPUTS_$(FUZZ_TARGET)) \
		-- -dict=$(FUZZ_DICT_$(FUZZ_TARGET)) -max_total_time=$(FUZZ_SECONDS) \
		-rss_limit_mb=2048 -timeout=10 -print_final_stats=1

clean:
	cargo clean
	rm -rf $(CACHE) out

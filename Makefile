# Every target sets up what it needs on a fresh machine. torch goes in first, pinned to the CPU wheel
# that installs here, so that no dependency drags in a multi-GB CUDA build.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
PROMPT ?= a dog barks
DEMO_OUT ?= demo.wav

.PHONY: venv test test-all demo lint clean

$(BIN)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev,recipes]"
	# aisfx ships the sound-effects CNN used as the "aisfx" FAD embedder; its metadata pins numpy==1.23 /
	# librosa==0.9.2, which conflict with ours, so it is installed without its (stale) dependencies
	$(BIN)/python -m pip install -q --no-deps "aisfx==0.1.2"
	touch $@

venv: $(BIN)/.installed

## test: the whole fast suite, offline (what CI runs)
test: venv
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

## test-all: also the slow, real-size checks
test-all: venv
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q --runslow

## demo: write $(DEMO_OUT) for "$(PROMPT)" with the embedded default model
demo: venv
	HF_HUB_OFFLINE=1 $(BIN)/tta generate "$(PROMPT)" -o $(DEMO_OUT)

lint: venv
	$(BIN)/ruff check tta vae vocoder eval tests bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

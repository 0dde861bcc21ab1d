# The two commands of the README: `make demo` (the main job, offline) and `make test`.
# Both create .venv/ on first use. Plain pip, not uv: pip takes torch 2.14.1 and torchvision 0.29.1
# from this machine's local wheel store in about 1.5 minutes; uv would download ~3 GB of CUDA wheels.
# torchvision is pinned with torch because timm imports it and a mismatched pair fails to import.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test setup clean-lake

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check $(TORCH_PINS) -e '.[test]'
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/galsae-lake demo

test: setup
	$(BIN)/python -m pytest -q

clean-lake:
	rm -rf lake/*/ lake/_staging lake/_lock

# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
TORCH_SPEC ?= torch==2.13.0
# The real datasets live beside the checkout in ../shared/data when it exists.
SHARED_DATA := $(abspath ../shared/data)
export DVAEQ_DATA_DIR ?= $(if $(wildcard $(SHARED_DATA)/binarized_mnist.npz),$(SHARED_DATA),)
# --dist loadgroup keeps each xdist_group on one worker (the service tests share one Ray)
PYTEST_ARGS ?= -n 2 --dist loadgroup

.PHONY: install demo test clean

$(PY):
	python3 -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install --upgrade pip
	# torch first, pinned: a bare `torch` resolves to a multi-GB CUDA build.
	$(PIP) install "$(TORCH_SPEC)"
	$(PIP) install -e '.[dev,service,tensorboard]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/dvae-q demo

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache

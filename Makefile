# yonos: `make help` lists the targets. Every target creates or reuses the project virtualenv ($(VENV)).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A local build satisfying these pins installs from disk where the machine has one; elsewhere pip downloads it.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install demo test clean

help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet $(TORCH_PINS)
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $@

install: $(VENV)/.installed ## Create the virtualenv and install yonos with its test dependencies

demo: install ## Train the tiny x2 teacher on the bundled sample photos (CPU, minutes), validate, super-resolve
	$(VENV)/bin/yonos demo

test: install ## Run the test suite (offline, CPU)
	HF_HUB_OFFLINE=1 YONOS_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

clean: ## Remove run outputs and caches (keeps the virtualenv and data/)
	rm -rf outputs lightning_logs .pytest_cache
	find . -name __pycache__ -prune -exec rm -rf {} +

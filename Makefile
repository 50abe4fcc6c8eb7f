# Two commands do everything on a fresh machine: `make run` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test bench bench-gpu wheels lint setup clean browser

# constraints.txt pins the exact CPU builds of these machines; the package itself only states ranges.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt torch torchvision
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e '.[fid,cluster,dev]'
	touch $(STAMP)

setup: $(STAMP)

# The default run is where the paper's question lives: gmm, D_ref from 1 % to 25 %, three seeds, the methods
# that answer it (all ten, gmm and toy2d: `tiwbench run --suite ref_size --executor local --threads 1`;
# digits_lt, unconverged at CPU budgets: `--suite ref_size_digits`).
RUN_METHODS ?= dsm_ref,iw_dsm,tiw_dsm,tiw_dsm@exact_empirical,oracle
RUN_REF_FRACS ?= 0.01,0.05,0.25

run: $(STAMP)
	$(BIN)/tiwbench run --suite ref_size --dataset gmm --methods $(RUN_METHODS) --ref-fracs $(RUN_REF_FRACS) \
		--executor local --threads 1
	$(BIN)/tiwbench report --format html --vs dsm_ref --output results/runs/report.html

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	# addopts carries --benchmark-skip for `make test`; replace it here so the benchmarks run.
	# tests/benchmarks/conftest.py also writes results/bench_summary.json.
	$(BIN)/python -m pytest tests/benchmarks -o addopts=-q -p no:cacheprovider --benchmark-only \
		--benchmark-columns=mean,stddev,rounds --benchmark-json=results/bench.json
	# the same step through `tiwbench bench`: FLOPs per step and TIW-DSM's ratio to dsm_obs per network
	$(BIN)/tiwbench bench --dataset toy2d --json results/bench_step_toy2d.json
	$(BIN)/tiwbench bench --dataset digits_lt --json results/bench_step_digits_lt.json

# On a CUDA machine: the paper-network figures of docs/benchmarks.md (JSON under results/gpu/), offline.
# Without CUDA it says so in one line and exits 2.
bench-gpu:
	OUT=results/gpu PY=$(PY) bash scripts/gpu_bench.sh

# The light pure-Python dependencies as wheels in .whl/ (git-ignored, carried to a GPU machine with the
# tree), for scripts/gpu_bench.sh's offline install; torch, numpy, scipy, pandas, scikit-learn and
# matplotlib are expected on a GPU image (their wheels would not fit a small carry).
wheels: $(STAMP)
	$(BIN)/pip download -q --disable-pip-version-check -c constraints.txt -d .whl --only-binary=:all: \
		setuptools pyyaml typer rich
	$(BIN)/pip download -q --disable-pip-version-check --no-deps -d .whl --only-binary=:all: \
		torch-fidelity clean-fid submitit

# Chromium for the HTML report's browser test (tests/test_browser.py skips without it). Kept out of `make test`:
# a fresh `apt-get install -y chromium` took 98 s here and needs root; where apt is absent it only says so.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	{ command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1; } || \
	echo "chromium not installed (no apt or not root): the browser test will be skipped"

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) results/runs results/cache

# Two commands do everything on a fresh machine: `make run` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test bench bench-gpu lint setup clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0 torchvision==0.28.0
	$(BIN)/pip install -q --disable-pip-version-check -e '.[fid,cluster,dev]'
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/tiwbench run --suite ref_size --executor local --threads 1

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

# On a CUDA machine: the paper-network figures of docs/benchmarks.md (JSON under results/gpu/).
bench-gpu:
	OUT=results/gpu PY=$(PY) bash scripts/gpu_bench.sh

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) results/runs results/cache

# Two commands do everything on a fresh machine: `make run` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test bench lint setup clean

# constraints.txt pins the exact CPU builds of these machines; the package itself only states ranges.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt torch torchvision
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e '.[fid,cluster,dev]'
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

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) results/runs results/cache

# Two entry points (see README): `make demo` sets everything up and runs ckpt on the bundled fixtures;
# `make test` runs the whole test suite (CI runs it through .ci/run).
PY := .venv/bin/python

.PHONY: setup demo test bench docs
setup:
	@bash scripts/setup.sh

demo: setup
	@bash scripts/demo.sh

test: setup
	@bash scripts/test.sh

bench: setup
	$(PY) benchmarks/run_all.py

docs: setup
	$(PY) scripts/gen_cli_docs.py

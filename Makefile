# Entry points; each target sets up .venv itself (scripts/setup-env.sh is idempotent).
PY := .venv/bin/python
export PYTHONHASHSEED := 0

.PHONY: setup test book book-quick clean bench

setup:
	@bash scripts/setup-env.sh

test: setup
	$(PY) -m pytest -q tests

# Full book on the embedded phantom default: execute the notebooks with papermill, then render.
book: setup
	$(PY) -m groundiff_core.book
	.venv/bin/jupyter-book build book -W --keep-going

# CI profile: fewer pairs, same notebooks, warnings are errors.
book-quick: setup
	$(PY) -m groundiff_core.book --quick
	.venv/bin/jupyter-book build book -W --keep-going

bench: setup
	$(PY) benchmarks/bench_engine.py

clean:
	rm -rf book/_build book/notebooks

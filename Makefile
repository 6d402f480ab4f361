# Entry points; each target sets up .venv itself (scripts/setup-env.sh is idempotent).
PY := .venv/bin/python
export PYTHONHASHSEED := 0

.PHONY: setup test test-slow test-all book book-quick book-bare book-fixture clean bench

setup:
	@bash scripts/setup-env.sh

# The fast set (minutes); test-slow runs the tests marked slow (notebook executions, torchrun,
# training, full MONAI conversions); CI runs both.
test: setup
	$(PY) -m pytest -q -m "not slow" tests

test-slow: setup
	$(PY) -m pytest -q -m slow tests

test-all: setup
	$(PY) -m pytest -q tests

# Full book on the embedded phantom default: execute the notebooks with papermill (two at a time, each
# kernel with half the cores as torch threads), then render. From a fresh clone on 2 cores: 16 min,
# against 35 min one notebook after the other (benchmarks/results/book_build.md).
# With GROUNDIFF_REPOSITORY_URL set (the publishing job), the pages link to that repository and carry
# Binder launch buttons (groundiff_core/book/hosting.py); without it they have neither.
book: setup
	$(PY) -m groundiff_core.book --jobs 2
	$(PY) -m groundiff_core.book.check book/notebooks --dataset phantom
	$(PY) -m groundiff_core.book.cost book/_generated/cost.md
	$(PY) -m groundiff_core.book.hosting book/_generated/_config.yml
	GROUNDIFF_BOOK_PROFILE=full .venv/bin/jupyter-book build book --config book/_generated/_config.yml -W --keep-going
	$(PY) -m groundiff_core.book.check --html book/_build/html

# CI profile: fewer pairs, same notebooks, warnings are errors; then every page must have run
# without error, state the phantom as its data and hold metrics in range.
book-quick: setup
	$(PY) -m groundiff_core.book --quick --jobs 2
	$(PY) -m groundiff_core.book.check book/notebooks --dataset phantom
	$(PY) -m groundiff_core.book.cost book/_generated/cost.md
	$(PY) -m groundiff_core.book.hosting book/_generated/_config.yml
	GROUNDIFF_BOOK_PROFILE=quick .venv/bin/jupyter-book build book --config book/_generated/_config.yml -W --keep-going
	$(PY) -m groundiff_core.book.check --html book/_build/html

# The five notebooks (quick profile, every pair) on an MS-CXR-shaped fixture and a MONAI bundle
# written to a temporary folder (never into book/), then the same checks, and the HTML rendered with
# the book's pages (tests/book_fixture.py).
book-fixture: setup
	$(PY) scripts/book_fixture.py --html

bench: setup
	$(PY) benchmarks/bench_engine.py

# The design card's command on its own: executes the pages that are missing or out of date with the
# same runner (quick profile here), then renders (groundiff_core/book/sphinx_ext.py).
book-bare: setup
	GROUNDIFF_BOOK_PROFILE=quick .venv/bin/jupyter-book build book -W --keep-going
	$(PY) -m groundiff_core.book.check --html book/_build/html

clean:
	rm -rf book/_build book/notebooks

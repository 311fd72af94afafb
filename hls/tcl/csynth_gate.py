#!/usr/bin/env python3
"""The csynth gate of the Vitis HLS flow: stop before export when synthesis missed its targets.

Vitis HLS does not fail when a pipeline misses its II or the clock estimate misses the target;
``run_hls.tcl`` calls this checker after ``csynth_design`` (and before ``export_design``) and
stops the flow when it exits non-zero. It reads the synthesis reports of a solution
(``syn/report/csynth.xml`` for the top and ``*_csynth.xml`` for every module) and checks:

* every pipelined loop reached its target II (``<TargetII>`` when the report has one, else the
  II=1 every pipelined loop of this kernel asks for);
* the estimated clock period is within the target period (``--period``, else the report's);
* each resource of the top (BRAM_18K, DSP, URAM, LUT, FF) is within ``--budget``, the part's
  totals from hardware.toml (``QTA_BUDGET`` of config.tcl).

Usage: ``csynth_gate.py REPORT_DIR_OR_CSYNTH_XML --period NS --budget "DSP 1728 BRAM_18K 624 ..."``.
Exit status: 0 all met, 1 a target missed (each miss printed), 2 no readable report.
Standard library only (the build machine runs it with its python3).
"""

from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

RESOURCE_ALIASES = {"DSP48E": "DSP", "DSP48": "DSP", "BRAM": "BRAM_18K"}


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def _loops(root: ET.Element, module: str) -> list[tuple[str, int | None, int]]:
    """(module/loop, target II or None, achieved II) of every pipelined loop of one report."""
    out = []
    for summary in root.iter("SummaryOfLoopLatency"):
        stack = [(child, child.tag) for child in summary]
        while stack:
            node, path = stack.pop()
            ii = node.findtext("PipelineII")
            achieved = _float(ii)
            if achieved is not None:
                target = _float(node.findtext("TargetII"))
                out.append((f"{module}/{path}", int(target) if target else None, int(achieved)))
            for child in node:
                if len(child):
                    stack.append((child, f"{path}/{child.tag}"))
    return out


def check(reports: list[Path], period: float | None, budget: dict[str, float]) -> list[str]:
    """Every target the reports miss (empty: all met)."""
    misses = []
    top = next((p for p in reports if p.name == "csynth.xml"), reports[0])
    for path in reports:
        root = ET.parse(path).getroot()
        module = root.findtext("UserAssignments/TopModelName") or path.stem.replace("_csynth", "")
        for loop, target, achieved in _loops(root, module):
            want = target if target is not None else 1
            if achieved > want:
                misses.append(f"II: loop {loop} reached II={achieved}, target {want}")
    root = ET.parse(top).getroot()
    target_period = period or _float(root.findtext("UserAssignments/TargetClockPeriod"))
    est = _float(root.findtext("PerformanceEstimates/SummaryOfTimingAnalysis/EstimatedClockPeriod"))
    if est is None or target_period is None:
        misses.append("clock: the report has no estimated or target clock period")
    elif est > target_period:
        misses.append(f"clock: estimated period {est:.3f} ns exceeds the target {target_period:.3f} ns")
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
        misses = check(reports, a.period, parse_budget(a.budget))
    except (ET.ParseError, ValueError) as e:
        print(f"GATE ERROR: {e}", file=sys.stderr)
        return 2
    for m in misses:
        print(f"GATE FAIL: {m}")
    if not misses:
        print(f"GATE PASS: {len(reports)} report(s): every loop at its II, clock and resources within target")
    return 1 if misses else 0


if __name__ == "__main__":
    raise SystemExit(main())

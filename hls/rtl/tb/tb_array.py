"""cocotb bench of the RTL PE array (hls/rtl/qta_array.v): whole steps, cycle by cycle.

Started by ``lora_qta.rtl.sim_steps`` (environment: QTA_RTL_MODULE, the name of lora_qta.rtl.contract,
whose contract functions this bench uses as the loader; QTA_RTL_JOB, the steps; QTA_RTL_OUT, the
results). Each cycle, at the falling clock edge, the bench reads the array's registered status
(phase, tau, fold offsets), drives this cycle's edge values exactly as the contract defines
them, then (after the combinational logic settles) reads the taps and files every valid tap
value at its output position. Cycles are counted from the array's own status: the step is the
array's busy cycles, a fold starts where the array starts one (OS fold / WS load, tau = 0).
"""

from __future__ import annotations

import importlib
import os

import numpy as np

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly


def _contract():
    """The host module that states the contract (lora_qta.rtl.contract; the runner passes its name)."""
    return importlib.import_module(os.environ["QTA_RTL_MODULE"])


def _pack(x: np.ndarray) -> int:
    """int8 values, element 0 in the least significant byte (the RTL's packing)."""
    return int.from_bytes(np.ascontiguousarray(x, dtype=np.int8).view(np.uint8).tobytes(), "little")


class Step:
    """Book-keeping of one step: lazily computed edge sequences per fold, outputs, cycles."""

    def __init__(self, rtl, shape, os_mode: bool, split: int, a: np.ndarray, b: np.ndarray):
        self.rtl, self.shape, self.os, self.split, self.a, self.b = rtl, shape, os_mode, split, a, b
        self.df = "os" if os_mode else "ws"
        self.mt, self.kt = a.shape
        self.nt = b.shape[1]
        self.c = np.zeros((self.mt, self.nt), np.int64)
        self.deliveries = np.zeros((self.mt, self.nt), np.int64)
        self.stray = 0   # valid tap values that belong to no output of the tile range
        self._edges: dict = {}

    def edges(self, phase: int, tau: int, f_row: int, f_col: int) -> tuple[int, int]:
        """Packed (a_edge, b_edge) for this cycle."""
        rtl = self.rtl
        if phase == rtl.PHASE_FOLD and self.os:
            key = ("os", f_row, f_col)
            if key not in self._edges:
                ae, be = rtl.os_fold_edges(self.shape, self.split, self.a, self.b, f_row, f_col)
                self._edges[key] = ([_pack(x) for x in ae], [_pack(x) for x in be])
            ae, be = self._edges[key]
            return (ae[tau], be[tau]) if tau < len(ae) else (0, 0)
        if phase == rtl.PHASE_LOAD:
            key = ("load", f_row, f_col)
            if key not in self._edges:
                self._edges[key] = [_pack(x) for x in rtl.ws_load_edges(self.shape, self.split, self.b, f_row, f_col)]
            be = self._edges[key]
            return 0, (be[tau] if tau < len(be) else 0)
        if phase == rtl.PHASE_FOLD:
            key = ("stream", f_row)
            if key not in self._edges:
                self._edges[key] = [_pack(x) for x in rtl.ws_stream_edges(self.shape, self.split, self.a, f_row)]
            ae = self._edges[key]
            return (ae[tau] if tau < len(ae) else 0), 0
        return 0, 0

    def taps(self, valid: np.ndarray, data: np.ndarray, tau: int, f_row: int, f_col: int) -> None:
        """File the valid tap values of this cycle (OS: assign; WS: add the K-fold's partial sums)."""
        t, j = np.nonzero(valid)
        rows, cols = self.rtl.tap_outputs(self.shape, self.df, self.split, t, j, tau, f_row, f_col)
        vals = data[t, j].astype(np.int64)
        if self.os:
            keep = (rows < self.mt) & (cols < self.nt)   # beyond the tile edge: discarded at the taps
        else:
            keep = cols < self.nt
            self.stray += int(((rows < 0) | (rows >= self.mt))[keep].sum())
            keep &= (rows >= 0) & (rows < self.mt)
        rows, cols, vals = rows[keep], cols[keep], vals[keep]
        if self.os:
            self.c[rows, cols] = vals
        else:
            self.c[rows, cols] += vals
        self.deliveries[rows, cols] += 1


async def run_step(dut, rtl, shape, os_mode: bool, split: int, a: np.ndarray, b: np.ndarray) -> dict:
    st = Step(rtl, shape, os_mode, split, a, b)
    nbr, cols = shape.nbr, shape.cols
    dut.os_in.value = int(os_mode)
    dut.split_in.value = split & 0xF
    dut.mt_in.value, dut.kt_in.value = a.shape
    dut.nt_in.value = b.shape[1]
    dut.a_edge.value = 0
    dut.b_edge.value = 0
    dut.start.value = 1
    await FallingEdge(dut.clk)          # the rising edge in between took the descriptor
    dut.start.value = 0
    folds, fold_cycles = [], []
    cycles = drain = 0
    cur = prev = None
    while True:
        phase = int(dut.phase.value)
        if phase == rtl.PHASE_IDLE:
            assert int(dut.done.value) == 1, "array went idle without signalling done"
            break
        tau, f_row, f_col = int(dut.tau.value), int(dut.f_row.value), int(dut.f_col.value)
        cycles += 1
        if tau == 0 and (phase == rtl.PHASE_LOAD or (phase == rtl.PHASE_FOLD and os_mode)):
            folds.append((f_row, f_col))
            fold_cycles.append(0)
            prev, cur = cur, (f_row, f_col)
        if phase == rtl.PHASE_DRAIN:
            drain += 1
        else:
            fold_cycles[-1] += 1
        ae, be = st.edges(phase, tau, f_row, f_col)
        dut.a_edge.value = ae
        dut.b_edge.value = be
        await ReadOnly()
        tv = int(dut.tap_valid.value)
        if tv:
            valid = np.unpackbits(np.frombuffer(tv.to_bytes((nbr * cols + 7) // 8, "little"), np.uint8),
                                  bitorder="little")[: nbr * cols].reshape(nbr, cols)
            raw = int(dut.tap_data.value).to_bytes(nbr * cols * 4, "little")
            data = np.frombuffer(raw, "<i4").reshape(nbr, cols)
            if os_mode:
                drained = cur if phase == rtl.PHASE_DRAIN else prev
                assert drained is not None, "OS taps valid before any fold finished"
                st.taps(valid, data, tau, *drained)
            else:
                st.taps(valid, data, tau, f_row, f_col)
        await FallingEdge(dut.clk)
    return {"c": st.c, "cycles": cycles, "fold_cycles": np.array(fold_cycles, np.int64),
            "folds": np.array(folds, np.int64).reshape(-1, 2), "drain": drain,
            "deliveries": st.deliveries, "stray": st.stray}


@cocotb.test()
async def run_job(dut):
    """Run every step of QTA_RTL_JOB, one after another, and save the results to QTA_RTL_OUT."""
    rtl = _contract()
    job = np.load(os.environ["QTA_RTL_JOB"])
    r, c, ms, dw = (int(x) for x in job["shape"])
    shape = rtl.ArrayShape(r, c, ms, dw)
    Clock(dut.clk, 10, unit="ns").start()
    dut.start.value = 0
    dut.rst.value = 1
    for _ in range(2):
        await FallingEdge(dut.clk)
    dut.rst.value = 0
    await FallingEdge(dut.clk)
    out = {}
    for n in range(int(job["n"])):
        os_mode, split = (int(x) for x in job[f"meta{n}"])
        res = await run_step(dut, rtl, shape, bool(os_mode), split, job[f"a{n}"], job[f"b{n}"])
        out.update({f"{k}{n}": v for k, v in res.items()})
    np.savez(os.environ["QTA_RTL_OUT"], **out)

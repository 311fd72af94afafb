"""Static rules for the HLS kernel sources (checked by tests/test_kernel_csim.py).

A deliberately simple checker on source text (comments stripped), in two parts:

* the synthesizable subset: forbidden constructs (regular expressions), every loop with a
  runtime bound has a LOOP_TRIPCOUNT, no recursion;
* the structure kernel v2 promises (hls/README.md):
  - ``dataflow``: the top function is one ``#pragma HLS DATAFLOW`` region whose body holds only
    declarations, pragmas and process calls, every process (function + template arguments) called
    exactly once;
  - ``static``: no static variables inside any function (they break DATAFLOW's single-producer
    rule and keep state across calls);
  - ``local stream``: a stream declared inside a process is both written and read there;
  - every rule checks each function definition apart (:func:`definitions`: overloads and member
    functions included), so a forwarding overload (``f(a)`` calling ``f(a, 0)``) would read as
    recursion (the kernel has none);
  - ``division``: no ``/`` or ``%`` by a runtime value outside the once-per-call functions
    (``RUNTIME_DIVISION_OK``): loader, PE and epilogue loops use counters and shifts;
  - ``pe index``: in the PE-array functions every index into a partitioned dimension (PE
    registers, feeder-bank and accumulator bank dimensions) is a compile-time expression:
    literals, constants and the variables of fully unrolled loops;
  - ``m_axi``: every pointer reaching an m_axi port is ``qta_beat_t`` (``ap_uint<QTA_AXI_BITS>``),
    no byte or word pointers.

Each rule has a snippet in the tests proving it can fail.
"""

from __future__ import annotations

import re

FORBIDDEN = {
    r"\bnew\b|\bdelete\b|\bmalloc\s*\(|\bcalloc\s*\(|\brealloc\s*\(|\bfree\s*\(": "dynamic memory",
    r"std::(vector|map|list|deque|string|set|unordered_\w+|function|shared_ptr|unique_ptr)": "standard containers",
    r"#include\s*<(vector|map|list|string|iostream|memory|functional|thread|deque)>": "non-synthesizable headers",
    r"\bprintf\s*\(|\bstd::cout\b|\bfopen\s*\(": "I/O in the kernel",
    r"\bwhile\s*\(|\bgoto\b": "unbounded loops",
    r"#pragma\s+HLS\s+RESOURCE\b": "legacy Vivado HLS RESOURCE pragma (use BIND_STORAGE)",
    r"#pragma\s+HLS\s+INTERFACE\s+(s_axilite|m_axi|ap_ctrl_\w+|axis)\b": "legacy INTERFACE syntax (use mode=)",
    r"\bap_axiu?\b|\bhls::axis\b": "AXI-stream side-channel types (the kernel has no axis ports)",
    r"#pragma\s+HLS\s+(DATA_PACK|INLINE\s+region|ARRAY_MAP)\b": "pragmas removed from Vitis HLS",
    r"\bthrow\b|\btry\b|\bcatch\b": "exceptions",
    r"\bvirtual\b": "virtual functions",
    r"#\s*if(n?def)?\b[^\n]*__SYNTHESIS__": "a __SYNTHESIS__ fork (C-simulation must run the datapath that synthesizes)",
}

RUNTIME_DIVISION_OK = ("decode", "descriptors")
"""Functions that run once per call (argument decoding, block counts): a divider there is
a one-off, not a loop's critical path."""

PE_FUNCTIONS = ("array_step",)
"""The PE-array function (one PE array for both dataflows) whose partitioned arrays must be indexed
at compile time."""

PE_BANKS: dict[str, int] = {}
"""Feeder-bank and accumulator arrays of the PE functions and how many leading dimensions are
banks. None since the review's B2: every bank is its own stream of blocks (side-bank pairs) or a
wide word (accumulator rows), so no memory of the PE function is indexed by a bank dimension."""

UNPARTITIONABLE = ("ARRAY_PARTITION", "ARRAY_RESHAPE", "AGGREGATE", "DISAGGREGATE")
"""Pragmas UG1399 does not support (or does not document) on an hls::stream_of_blocks."""

M_AXI_POINTERS = re.compile(r"\b(rd\d*|wr\d*)\b")


def strip_comments(src: str) -> str:
    src = re.sub(r"/\*.*?\*/", "", src, flags=re.S)
    return re.sub(r"//[^\n]*", "", src)


def _block(code: str, open_at: int) -> int:
    """Index one past the bracket that closes the one at ``open_at`` (``{`` or ``[``)."""
    pair = {code[open_at]: 1, {"{": "}", "[": "]"}[code[open_at]]: -1}
    depth, j = 0, open_at
    while j < len(code):
        depth += pair.get(code[j], 0)
        j += 1
        if depth == 0:
            break
    return j


def definitions(code: str) -> list[tuple[str, str, str]]:
    """(name, parameter list, body) of every function definition, overloads included, in source
    order (``#define`` lines, with their continuations, are macros, not definitions: blanked
    first)."""
    code = re.sub(r"#[ \t]*define(?:[^\n]*\\\n)*[^\n]*", lambda m: " " * len(m.group(0)), code)
    out = []
    for fn in re.finditer(r"(?:^|\n)[\w:<>,\s\*&]*?\b(\w+)\s*\(([^;{]*?)\)\s*(?:const\s*)?\{", code):
        name = fn.group(1)
        if name in ("if", "for", "switch", "while"):
            continue
        end = _block(code, fn.end() - 1)
        out.append((name, fn.group(2), code[fn.end():end - 1]))
    return out


def functions(code: str) -> dict[str, tuple[str, str]]:
    """Function name -> (parameter list, body) over every definition of that name
    (:func:`definitions`), for tests that read a function's text: the overloads' and member
    functions' parameter lists joined with commas and their bodies with newlines, so none is
    hidden (``fetch`` has two overloads; ``NoScales::write`` shares its name with the ``write``
    process). The rules themselves check each definition apart."""
    params_of: dict[str, list[str]] = {}
    bodies: dict[str, list[str]] = {}
    for name, params, body in definitions(code):
        params_of.setdefault(name, []).append(params)
        bodies.setdefault(name, []).append(body)
    return {name: (", ".join(p for p in params_of[name] if p.strip()), "\n".join(bodies[name])) for name in bodies}


def _constants(code: str) -> set[str]:
    """Names of compile-time constants: constexpr declarations (also comma-separated ones), macros,
    enum values."""
    names = set()
    for m in re.finditer(r"\bconstexpr\s+\w+\s+([^;]*);", code):
        names |= set(re.findall(r"(?:^|,)\s*(\w+)\s*=", m.group(1)))
    names |= set(re.findall(r"#define\s+(\w+)", code))
    names |= set(re.findall(r"\benum\s*\{\s*(\w+)", code))
    return names


def _local_constants(body: str, known: set[str]) -> set[str]:
    """``const`` locals of ``body`` initialised from compile-time expressions (e.g. from the
    variables of unrolled loops), to a fixed point."""
    out = set(known)
    decls = re.findall(r"\bconst\s+(?:int|uint32_t|unsigned)\s+(\w+)\s*=\s*([^;]*);", body)
    changed = True
    while changed:
        changed = False
        for name, expr in decls:
            if name not in out and _compile_time(expr, out):
                out.add(name)
                changed = True
    return out


def _compile_time(expr: str, known: set[str]) -> bool:
    """Whether every identifier of ``expr`` is a literal, a constant, a QTA_ macro or in ``known``."""
    for ident in re.findall(r"[A-Za-z_]\w*", expr):
        if ident in known or ident.startswith("QTA_") or ident in ("true", "false"):
            continue
        return False
    return True


def _subscripts(body: str, name: str) -> list[list[str]]:
    """The index expressions of every ``name[..][..]`` in ``body``."""
    out = []
    for m in re.finditer(rf"(?<![\w.]){name}\s*\[", body):
        idx, j = [], m.end() - 1
        while j < len(body) and body[j] == "[":
            k = _block(body, j)
            idx.append(body[j + 1:k - 1])
            j = k
            while j < len(body) and body[j] in " \t":
                j += 1
        out.append(idx)
    return out


def _unrolled_vars(body: str) -> set[str]:
    """Variables of loops whose body starts with ``#pragma HLS UNROLL`` (constant bounds)."""
    out = set()
    for m in re.finditer(r"for\s*\(\s*(?:int|uint32_t|unsigned)\s+(\w+)\s*=[^;]*;([^;]*);[^)]*\)\s*\{\s*"
                         r"#pragma\s+HLS\s+UNROLL\b", body):
        out.add(m.group(1))
    return out


def _partitioned(body: str) -> dict[str, int | None]:
    """Arrays of ``body`` with complete partitions: name -> dimension (None: every dimension)."""
    out: dict[str, int | None] = {}
    for m in re.finditer(r"#pragma\s+HLS\s+ARRAY_PARTITION\s+variable=(\w+)\s+type=complete(?:\s+dim=(\d+))?", body):
        dim = int(m.group(2)) if m.group(2) else 1
        name = m.group(1)
        if dim == 0:
            out[name] = None
        elif out.get(name, 0) is not None:
            out[name] = max(out.get(name) or 0, dim)
    return out


def check_dataflow(code: str, defs: list[tuple[str, str, str]]) -> list[str]:
    found = []
    tops = [(n, b) for n, _, b in defs if re.search(r"#pragma\s+HLS\s+DATAFLOW", b)]
    if not tops:
        return ["dataflow: no function with #pragma HLS DATAFLOW"]
    for name, body in tops:
        region = body[re.search(r"#pragma\s+HLS\s+DATAFLOW", body).end():]
        if re.search(r"\b(for|while|if|switch)\b", region):
            found.append(f"dataflow: control flow inside the DATAFLOW region of {name}")
        calls: dict[str, int] = {}
        for stmt in region.split(";"):
            stmt = re.sub(r"#pragma[^\n]*|QTA_PRAGMA\([^\n]*\)", "", stmt).strip()
            m = re.match(r"([A-Za-z_]\w*(?:<[^>]*>)?)\s*\(", stmt)
            if m and not re.match(r"(QTA_\w+|hls::)", stmt):
                key = re.sub(r"\s+", "", m.group(1))
                calls[key] = calls.get(key, 0) + 1
        for key, n in calls.items():
            if n > 1:
                found.append(f"dataflow: process {key} called {n} times in the DATAFLOW region of {name} "
                             "(each call site is its own hardware instance)")
        if not calls:
            found.append(f"dataflow: no process calls in the DATAFLOW region of {name}")
    return found


def check_stream_index(code: str, defs: list[tuple[str, str, str]]) -> list[str]:
    """Review N6: an array of streams accessed with a run-time index (``s[i].read()`` with ``i``
    not a constant or an unrolled loop's variable) becomes a switch over every stream of the
    array, each with an access site per iteration: the II cost review B4 found in the store."""
    consts = _constants(code)
    found = []
    for name, params, body in defs:
        known = _local_constants(body, consts | _unrolled_vars(body))
        for m in re.finditer(r"(?<![\w.])(\w+)\s*\[([^\]]*)\]\s*\.\s*(read|write|read_nb|write_nb)\s*\(", body):
            if not _compile_time(m.group(2), known):
                found.append(f"stream index: {m.group(1)}[{m.group(2)}].{m.group(3)} in {name} is indexed at run time")
    return found


STREAM_DECL = re.compile(r"\b(?:hls::stream\s*<[^;{}]*?>|HdrStream)\s+([^;(){}]*(?:\([^;(){}]*\)[^;(){}]*)*);")
"""A stream declaration: ``hls::stream<T>`` or ``HdrStream`` and its declarators up to the ``;``
(names, array sizes, an optional ``("label")``). Streams of blocks (``QTA_BLOCKS``) are
memories, not FIFOs, and are not checked."""


def check_local_streams(defs: list[tuple[str, str, str]]) -> list[str]:
    """A stream declared inside a process (any function without ``#pragma HLS DATAFLOW``, where
    streams connect processes) is a FIFO of that process alone: it must be both written and read
    there (``.write``/``.write_nb``, ``.read``/``.read_nb``, on the stream or an element of a
    stream array). One declared only to fill a parameter (a fetcher's never-written scale FIFO)
    is a FIFO nothing drives. Limits (none occurs in the kernel): ``<<``/``>>`` on a stream and
    ``p->q.read()`` are not told apart from other code (the first is not an access, the second
    counts as one of ``q``); a local stream handed to a helper that reads or writes it is
    flagged (the kernel's processes use their local FIFOs in place); declarations written
    ``hls::stream<ap_uint<8> > q``, with a brace-initialized label, or through another typedef
    than ``HdrStream`` are not seen."""
    found = []
    for name, _, body in defs:
        if re.search(r"#pragma\s+HLS\s+DATAFLOW", body):
            continue
        for m in STREAM_DECL.finditer(body):
            for decl in re.sub(r"\([^()]*\)", "", m.group(1)).split(","):
                var = re.match(r"\s*(\w+)", decl)
                if not var:
                    continue
                for op, done in (("write", "written"), ("read", "read")):
                    access = rf"(?<![\w.]){var.group(1)}\s*(?:\[[^\]]*\]\s*)*\.\s*{op}(?:_nb)?\s*\("
                    if not re.search(access, body):
                        found.append(f"local stream: {var.group(1)} in {name} is never {done} there")
    return found


def check_static(defs: list[tuple[str, str, str]]) -> list[str]:
    return [f"static: static variable in {name}: {m.group(0).strip()!r}"
            for name, _, body in defs for m in re.finditer(r"\bstatic\b[^;]*;", body)]


def check_division(code: str, defs: list[tuple[str, str, str]]) -> list[str]:
    consts = _constants(code)
    found = []
    for name, _, body in defs:
        if name in RUNTIME_DIVISION_OK:
            continue
        known = _local_constants(body, consts | _unrolled_vars(body))
        for line in body.splitlines():
            if line.strip().startswith("#"):
                continue  # pragmas: constant expressions
            for m in re.finditer(r"([/%])\s*(\([^()]*\)|[\w.]+(?:\s*[*]\s*[\w.]+)*)", line):
                rhs = m.group(2).strip()
                if _compile_time(rhs, known):
                    continue
                found.append(f"division: runtime {m.group(1)} by {rhs!r} in {name}")
    return found


def check_pe_index(code: str, defs: list[tuple[str, str, str]]) -> list[str]:
    consts = _constants(code)
    found = []
    for name, _, body in defs:
        if name not in PE_FUNCTIONS:
            continue
        known = _local_constants(body, consts | _unrolled_vars(body))
        arrays: dict[str, int | None] = dict(PE_BANKS)
        arrays.update(_partitioned(body))
        for arr, ndim in arrays.items():
            for idx in _subscripts(body, arr):
                check = idx if ndim is None else idx[:ndim]
                bad = [e for e in check if not _compile_time(e, known)]
                if bad:
                    found.append(f"pe index: {arr}[{']['.join(idx)}] in {name} selects a partition with the "
                                 f"runtime index {bad[0]!r}")
        for m in re.finditer(r"\bac\.(\w+)\s*\[([^\]]*)\]", body):
            if not _compile_time(m.group(2), known):
                found.append(f"pe index: ac.{m.group(1)}[{m.group(2)}] in {name} indexes a per-PE register "
                             "at run time")
    return found


def check_blocks(code: str) -> list[str]:
    """No partition/reshape/aggregate pragma on a stream of blocks (``QTA_BLOCKS(T, name)``):
    UG1399 lists ARRAY_PARTITION and ARRAY_RESHAPE as unsupported for stream-of-blocks."""
    names = set(re.findall(r"QTA_BLOCKS\(\s*\w+\s*,\s*(\w+)\s*\)", code))
    found = []
    for m in re.finditer(r"HLS\s+(%s)\s+variable=(\w+)" % "|".join(UNPARTITIONABLE), code):
        if m.group(2) in names:
            found.append(f"blocks: {m.group(1)} on the stream of blocks {m.group(2)} (unsupported, UG1399)")
    return found


def check_m_axi(code: str, defs: list[tuple[str, str, str]]) -> list[str]:
    found = []
    for m in re.finditer(r"typedef\s+([^;]*?)\s+qta_beat_t\s*;", code):
        if re.sub(r"\s+", "", m.group(1)) != "ap_uint<QTA_AXI_BITS>":
            found.append(f"m_axi: qta_beat_t is {m.group(1)}, not ap_uint<QTA_AXI_BITS>")
    for name, params, _ in defs:
        for p in params.split(","):
            p = p.strip()
            m = re.match(r"(?:const\s+)?([\w:<>]+)\s*\*\s*(\w+)$", p)
            if not m:
                continue
            ctype, pname = m.groups()
            if M_AXI_POINTERS.fullmatch(pname) and ctype != "qta_beat_t":
                found.append(f"m_axi: port {pname} of {name} is {ctype} *, not a beat (qta_beat_t)")
            elif ctype in ("int8_t", "uint8_t", "char", "int16_t", "uint16_t", "int", "int32_t"):
                found.append(f"m_axi: byte/word pointer {ctype} *{pname} in {name} (ports are beat-wide)")
    return found


def violations(src: str) -> list[str]:
    """Every rule ``src`` breaks, as readable strings (empty when clean)."""
    code = strip_comments(src)
    found = [f"{why}: {m.group(0)!r}" for pat, why in FORBIDDEN.items() for m in re.finditer(pat, code)]
    lines = code.splitlines()
    for i, line in enumerate(lines):
        m = re.search(r"\bfor\s*\(([^;]*);([^;]*);", line)
        if not m:
            continue
        bound = m.group(2)
        constant = re.fullmatch(r"\s*\w+\s*(<|<=|>=)\s*(\(?-?[A-Z_][A-Z0-9_]*\)?|\d+)\s*", bound)
        window = "\n".join(lines[i + 1:i + 4])
        if not constant and "LOOP_TRIPCOUNT" not in window and "UNROLL" not in window:
            found.append(f"loop without LOOP_TRIPCOUNT at line {i + 1}: {line.strip()}")
    defs = definitions("\n" + code)  # each rule sees every definition apart: overloads, members
    for name, _, body in defs:
        if re.search(rf"(?<![\w.]){name}\s*(<[^>]*>)?\s*\(", body):
            found.append(f"recursion in {name}")
    if re.search(r"#pragma\s+HLS\s+DATAFLOW", code) or re.search(r"\bqta_gemm\s*\(\s*QTA_TOP_PARAMS\s*\)\s*\{", code):
        found += check_dataflow(code, defs)
    found += check_static(defs)
    found += check_local_streams(defs)
    found += check_division(code, defs)
    found += check_pe_index(code, defs)
    found += check_stream_index(code, defs)
    found += check_m_axi(code, defs)
    found += check_blocks(code)
    return found

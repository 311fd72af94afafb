"""Rules of the synthesizable subset for the kernel sources, checked by test_kernel_csim.py.

A line-oriented checker, deliberately simple: each rule is a regular expression that must
not match kernel code (comments stripped), plus two structural rules: every loop with a
runtime bound carries a LOOP_TRIPCOUNT (so it is bounded and reported), and no function
calls itself (no recursion).
"""

from __future__ import annotations

import re

FORBIDDEN = {
    r"\bnew\b|\bdelete\b|\bmalloc\s*\(|\bcalloc\s*\(|\brealloc\s*\(|\bfree\s*\(": "dynamic memory",
    r"std::(vector|map|list|deque|string|set|unordered_\w+|function|shared_ptr|unique_ptr)": "standard containers",
    r"#include\s*<(vector|map|list|string|iostream|memory|functional|thread)>": "non-synthesizable headers",
    r"\bprintf\s*\(|\bstd::cout\b|\bfopen\s*\(": "I/O in the kernel",
    r"\bwhile\s*\(|\bgoto\b": "unbounded loops",
    r"#pragma\s+HLS\s+RESOURCE\b": "legacy Vivado HLS RESOURCE pragma (use BIND_STORAGE)",
    r"#pragma\s+HLS\s+INTERFACE\s+(s_axilite|m_axi|ap_ctrl_\w+|axis)\b": "legacy INTERFACE syntax (use mode=)",
    r"\bap_axiu?\b|\bhls::stream<[^>]*>\s*&?\s*\w+\s*\[": "unsupported stream arrays",
    r"#pragma\s+HLS\s+(DATA_PACK|INLINE\s+region|ARRAY_MAP)\b": "pragmas removed from Vitis HLS",
    r"\bthrow\b|\btry\b|\bcatch\b": "exceptions",
    r"\bvirtual\b": "virtual functions",
}


def strip_comments(src: str) -> str:
    src = re.sub(r"/\*.*?\*/", "", src, flags=re.S)
    return re.sub(r"//[^\n]*", "", src)


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
        constant = re.fullmatch(r"\s*\w+\s*<\s*(QTA_\w+|\d+)\s*", bound)
        window = "\n".join(lines[i + 1:i + 4])
        if not constant and "LOOP_TRIPCOUNT" not in window:
            found.append(f"loop without LOOP_TRIPCOUNT at line {i + 1}: {line.strip()}")
    for fn in re.finditer(r"\n[\w:<>,\s\*&]+?\b(\w+)\s*\([^;{)]*\)\s*\{", code):
        name = fn.group(1)
        if name in ("if", "for", "switch"):
            continue
        depth, j = 1, fn.end()
        while depth and j < len(code):
            depth += {"{": 1, "}": -1}.get(code[j], 0)
            j += 1
        if re.search(rf"\b{name}\s*\(", code[fn.end():j]):
            found.append(f"recursion in {name}")
    return found

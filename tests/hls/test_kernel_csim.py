"""The HLS kernel itself: its C++ testbench under g++, and the static rules of hls_rules.py."""

import re
import shutil
from pathlib import Path

import pytest

from hls_rules import check_dataflow, definitions, functions, strip_comments, violations
from lora_qta.hw.config import config
from lora_qta.runtime import csim

HLS_SRC = Path(__file__).resolve().parents[2] / "hls" / "src"
# The synthesizable kernel sources. hls/src/qta_blocks.h is left out on purpose: its non-Vitis
# branch is the plain C++ model of hls::stream_of_blocks (std::deque, new/delete), which stands
# in for the Vitis library header in C-simulation as hls_stream.h does for hls::stream.
KERNEL_SOURCES = [HLS_SRC / "qta_gemm.cpp", HLS_SRC / "qta_gemm.h", HLS_SRC / "qta_csim_api.cpp"]


@pytest.mark.parametrize("board", sorted(config().boards))
def test_cpp_testbench_passes(board):
    proc = csim.run_testbench(config().board(board))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " 0 failed" in proc.stdout
    assert "read while empty" not in proc.stdout, "a process read a stream before its producer wrote it"


def test_cosim_capture_pass_accepts_zero_measured_cycles():
    """Review 2 B3: cosim first runs the testbench (compiled for cosim) against the C function,
    which measures 0 cycles; that pass must not fail, or cosim stops before any RTL runs."""
    proc = csim.run_testbench(config().board("pynq_z2"), defines=("QTA_COSIM",))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " 0 failed" in proc.stdout and "capture pass" in proc.stdout


def test_build_key_follows_the_ap_types_headers_and_the_compiler(tmp_path, monkeypatch):
    """A build cached under another hls4ml's ap_int headers, or another compiler, is not reused."""
    board = config().board("pynq_z2")
    copy = tmp_path / "ap_types"
    shutil.copytree(csim.ap_types_dir(), copy)
    monkeypatch.setattr(csim, "ap_types_dir", lambda: copy)
    key = csim.build_key(board)
    assert csim.build_key(board) == key
    (copy / "ap_int.h").write_bytes((copy / "ap_int.h").read_bytes() + b"\n// another release\n")
    changed_header = csim.build_key(board)
    assert changed_header != key
    monkeypatch.setattr(csim, "compiler_identity", lambda cxx: "g++ (another release) 99.1")
    assert csim.build_key(board) not in (key, changed_header)
    assert csim.build_key(board, testbench=True) != csim.build_key(board)


def test_build_uses_strict_warnings():
    assert {"-std=c++14", "-Wall", "-Werror"} <= set(csim.CXXFLAGS)


@pytest.mark.parametrize("path", KERNEL_SOURCES, ids=lambda p: p.name)
def test_kernel_sources_follow_the_rules(path: Path):
    assert violations(path.read_text()) == []


def test_kernel_top_is_one_dataflow_region_of_single_call_site_processes():
    code = strip_comments((HLS_SRC / "qta_gemm.cpp").read_text())
    assert check_dataflow(code, definitions("\n" + code)) == []
    body = functions("\n" + code)["qta_gemm"][1]
    region = body[body.index("DATAFLOW"):]
    for process in ("descriptors(", "fetch<0>(", "fetch<3>(", "load(", "array(", "store(", "write<0>(",
                    "write<3>(", "model(", "counter("):
        assert region.count(process) == 1, process


def test_one_pe_array_with_one_mac_per_pe():
    """Review B1: OS and WS share ONE R x C array: one function, one pipelined loop, and one
    INT8 x INT8 multiply in the whole kernel (inside the fully unrolled PE loops), with the
    dataflow as per-PE operand selects; the old per-mode functions are gone."""
    code = strip_comments((HLS_SRC / "qta_gemm.cpp").read_text())
    funcs = functions("\n" + code)
    assert "os_step" not in funcs and "ws_step" not in funcs
    body = funcs["array_step"][1]
    assert body.count("#pragma HLS PIPELINE") == 1
    macs = re.findall(r"\(int16_t\)\s*\w+\s*\*\s*\(int16_t\)\s*\w+", code)
    assert len(macs) == 1 and macs[0] in body, macs
    # the mode selects feed the one multiplier and the one adder
    assert re.search(r"bop\s*=\s*os\s*\?", body) and re.search(r"add\s*=\s*os\s*\?", body)
    array_body = funcs["array"][1]
    assert array_body.count("array_step(") == 1


def test_internal_words_are_packed_ap_uint():
    """Review B2: beats, feeder words, store words and accumulator rows are hand-packed ap_uint
    words (no struct whose memory binding depends on HLS's disaggregation), and every block is
    one stream of blocks per bank (pair) or wide word, with no partition pragma on it."""
    code = strip_comments((HLS_SRC / "qta_gemm.cpp").read_text())
    for word in ("AWord", "BWord", "Beat", "SWord", "AccRow", "AccXRow"):
        assert re.search(rf"typedef\s+(ap_uint<[^;]*>|qta_beat_t)\s+{word}\s*;", code), word
        assert not re.search(rf"struct\s+{word}\b", code), word
    for block in ("A0Block", "AXBlock", "B0Block", "BXBlock", "AccPBlock", "AccXBlock"):
        m = re.search(rf"typedef\s+\w+\s+{block}((?:\[[^\]]*\])+)\s*;", code)
        assert m and m.group(1).count("[") == 1, f"{block}: one memory dimension, no bank dimension"
    assert "check_blocks" in violations.__code__.co_names


def test_m_axi_ports_are_beat_wide():
    pointers = [a for a in config().args if a.kind == "pointer"]
    assert len(pointers) == 8 and {a.type for a in pointers} == {"qta_beat_t", "const qta_beat_t"}
    assert {a.bundle for a in pointers} == {f"gmem{i}" for i in range(4)}
    header = (HLS_SRC / "qta_gemm.h").read_text()
    assert "typedef ap_uint<QTA_AXI_BITS> qta_beat_t;" in header


# A snippet breaking each rule, and the text of the rule it breaks.
VIOLATIONS = [
    ("int *p = new int[4];", "dynamic memory"),
    ("#include <vector>\nstd::vector<int> v;", "standard containers"),
    ("void f(int n) {\n  while (n) { n--; }\n}", "unbounded loops"),
    ("#pragma HLS RESOURCE variable=x core=RAM_2P", "legacy Vivado HLS"),
    ("#pragma HLS INTERFACE s_axilite port=return", "legacy INTERFACE"),
    ("void g(int n) {\n  for (int i = 0; i < n; i++) {\n    x += i;\n  }\n}", "LOOP_TRIPCOUNT"),
    ("\nint fact(int n) {\n  return n ? n * fact(n - 1) : 1;\n}", "recursion"),
    ("#ifdef __SYNTHESIS__\nint x;\n#endif", "__SYNTHESIS__ fork"),
    ("void top(int a) {\n#pragma HLS DATAFLOW\n  hls::stream<int> s;\n  produce(a, s);\n  consume(s);\n"
     "  consume(s);\n}", "called 2 times"),
    ("void top(int a) {\n#pragma HLS DATAFLOW\n  hls::stream<int> s;\n  if (a) produce(a, s);\n  consume(s);\n}",
     "control flow inside the DATAFLOW region"),
    ("void top(int a) {\n#pragma HLS DATAFLOW\n  int x = a + 1;\n}", "no process calls"),
    ("void qta_gemm(QTA_TOP_PARAMS) {\n  descriptors(m);\n  load(m);\n}", "no function with #pragma HLS DATAFLOW"),
    ("void fill(int a) {\n  static int buf[16];\n  buf[0] = a;\n}", "static variable"),
    ("template <int P>\nvoid fetch(int n, hls::stream<int> &s) {\n  s.write(n);\n}\ntemplate <int P>\n"
     "void fetch(int n) {\n  hls::stream<int> none;\n  fetch_port(n, none);\n}", "local stream: none in fetch is never written"),
    ("void fifo(int n) {\n  hls::stream<int> q(\"q\"), r[2][2];\n  q.write(n);\n  r[1][0].write(q.read());\n}",
     "local stream: r in fifo is never read"),
    ("void fifo(int n) {\n  hls::stream<int> q;\n  t.q.write(n);\n  n = t.q.read();\n}",
     "local stream: q in fifo is never written"),
    ("struct S {\n  void fill(int a) {}\n};\nvoid fill(int a) {\n  static int buf[16];\n  buf[0] = a;\n}",
     "static variable in fill"),
    ("template <int P>\nvoid fetch_z(int n) {\n  const int w = 4;\n  int r = n % w;\n}\ntemplate <int P>\n"
     "void fetch_z(int n, int w) {\n  int r = n % w;\n}", "runtime % by 'w' in fetch_z"),
    ("void load_x(int n, int d, int *x) {\n  for (int i = 0; i < n; i++) {\n#pragma HLS LOOP_TRIPCOUNT max=4\n"
     "    x[i] = i / d;\n  }\n}", "runtime / by 'd'"),
    ("void fetch_x(int n, int w) {\n  int r = n % w;\n}", "runtime % by 'w'"),
    ("void store_x(int n, hls::stream<int> s[4]) {\n  for (int e = 0; e < n; e++) {\n#pragma HLS LOOP_TRIPCOUNT max=4\n"
     "    s[e & 3].write(e);\n  }\n}", "stream index: s[e & 3].write"),
    ("void array_step(int s) {\n  int pacc[4][4];\n#pragma HLS ARRAY_PARTITION variable=pacc type=complete dim=0\n"
     "  for (int i = 0; i < 4; i++) {\n#pragma HLS UNROLL\n    pacc[i][s] = 0;\n  }\n}", "pe index"),
    ("void array_step(int b) {\n  int pout[4][4];\n#pragma HLS ARRAY_PARTITION variable=pout type=complete dim=1\n"
     "  pout[b][0] = 1;\n}", "pe index"),
    ("void top() {\n  QTA_BLOCKS(AccPBlock, accps);\n#pragma HLS ARRAY_PARTITION variable=accps type=complete dim=1\n}",
     "blocks: ARRAY_PARTITION on the stream of blocks accps"),
    ("void top() {\n  QTA_BLOCKS(A0Block, a0s);\n#pragma HLS AGGREGATE variable=a0s compact=bit\n}", "blocks: AGGREGATE"),
    ("void fetch(const int8_t *rd0, int n) {\n}", "m_axi"),
    ("void write(ap_uint<32> *wr1) {\n}", "m_axi: port wr1"),
    ("typedef ap_uint<64> qta_beat_t;", "m_axi: qta_beat_t is"),
]


@pytest.mark.parametrize("snippet, rule", VIOLATIONS, ids=[r for _, r in VIOLATIONS])
def test_rules_catch_violations(snippet, rule):
    assert any(rule in v for v in violations(snippet)), violations(snippet)


def test_rules_accept_compile_time_pe_indices_and_constant_divisions():
    ok = ("constexpr int MS = 4, PG = 2;\nvoid array_step(int s, AccW accp[8][2][64]) {\n  int pacc[4][4];\n"
          "#pragma HLS ARRAY_PARTITION variable=pacc type=complete dim=0\n  for (int i = 0; i < 4; i++) {\n"
          "#pragma HLS UNROLL\n    const int j = (i + 1) * MS - 1;\n    pacc[i][j % 4] = s;\n"
          "    accp[i / PG][i % PG][s] = pacc[i][0];\n  }\n}\n"
          "void fetch_x(hls::stream<int> s[4]) {\n  for (int p = 0; p < 4; p++) {\n#pragma HLS UNROLL\n"
          "    const int q = p + MS;\n    s[q - MS].write(p);\n  }\n}")
    assert violations(ok) == []


def test_kernel_reports_config_digest():
    from lora_qta.hw.config import board_digest

    for name in config().boards:
        board = config().board(name)
        assert csim.load(board)._lib.qta_csim_config_digest().decode() == board_digest(board)


def _operands(body: str, at: int) -> tuple[str, str]:
    """The operands of the binary ``*`` at ``body[at]``: a name (with member access and a cast
    before it) or a parenthesised group on each side."""
    j = at - 1
    while body[j] == " ":
        j -= 1
    if body[j] == ")":
        depth, k = 0, j
        while True:
            depth += {")": 1, "(": -1}.get(body[k], 0)
            if depth == 0:
                break
            k -= 1
        left = body[k:j + 1]
    else:
        left = re.search(r"[\w.]+$", body[:j + 1]).group(0)
    right = re.match(r"\s*(\([^()]*\)|[\w.]+)", body[at + 1:]).group(1)
    return left, right


def test_writers_multiply_nothing_at_run_time():
    """Review S4: the writers' row addresses are a counter of the descriptors (StepW.c_row), the
    element size a shift and PORT a constant, so no write process binds a multiplier: every
    product has an operand made of constants only."""
    code = strip_comments((HLS_SRC / "qta_gemm.cpp").read_text())
    params, body = functions("\n" + code)["write"]
    assert "qta_beat_t *wr" in params and "ss.read()" in body  # the process, not only NoScales::write
    body = re.sub(r"#pragma[^\n]*", "", body)
    body = re.sub(r"\((?:uint64_t|uint32_t|int)\)", "", body)  # casts
    constant = {"P", "PORT", "SWB", "BB", "LGBB"}
    runtime = []
    for m in re.finditer(r"(?<=[\w)\s])\*(?=[\s(\w])", body):
        left, right = _operands(body, m.start())
        if not any(all(t in constant or t.isdigit() or t.startswith("QTA_") for t in re.findall(r"\w+", x))
                   for x in (left, right)):
            runtime.append((left, right))
    assert runtime == [], runtime
    assert "ALLOCATION operation instances=mul" not in functions("\n" + code)["write"][1]


def _stream_depth(source: str, variable: str, defines: dict[str, int]) -> int:
    """The depth the kernel's STREAM pragma gives ``variable``: a literal or a generated QTA_ macro."""
    found = re.search(rf"HLS STREAM variable={variable} depth=(\w+)", source)
    assert found, f"no STREAM depth pragma for {variable}"
    word = found.group(1)
    return int(word) if word.isdigit() else defines[word]


@pytest.mark.parametrize("board", sorted(config().boards))
def test_scale_fifo_holds_two_blocks_of_the_largest_scale_vector(board):
    """Review 2 B1: fetch<0> writes a block's scales before its operands and the store reads them
    only after the array released the block, so scl must hold a whole vector (else deadlock; the
    C-simulation streams are unbounded and cannot show it) and two for no fetch stall."""
    from lora_qta.hw.generate import header

    b = config().board(board)
    defines = {m.group(1): int(m.group(2)) for m in re.finditer(r"#define (QTA_\w+) (\d+)\n", header(board))}
    depth = _stream_depth(strip_comments((HLS_SRC / "qta_gemm.cpp").read_text()), "scl", defines)
    vector_beats = -(-max(b.tile_m_max, b.tile_n_max) * 8 // b.axi_bytes)
    assert depth >= 2 * vector_beats, f"{board}: scl depth {depth} < 2 x {vector_beats} beats"


def test_pe_multiply_is_bound_to_a_dsp():
    """Review 2 S7: the PE array's one multiply assigns a variable that a BIND_OP pragma pins to
    a DSP (op=mul impl=dsp), in the same function, so HLS cannot put the 8x8 products in fabric."""
    code = strip_comments((HLS_SRC / "qta_gemm.cpp").read_text())
    body = functions("\n" + code)["array_step"][1]
    mac = re.search(r"(\w+)\s*=\s*\(int16_t\)\s*\w+\s*\*\s*\(int16_t\)\s*\w+", body)
    assert mac, "no INT8 x INT8 multiply assigned to a variable in array_step"
    assert re.search(rf"#pragma HLS BIND_OP variable={mac.group(1)} op=mul impl=dsp", body), mac.group(1)

#!/usr/bin/env bash
# Build the lora-qta overlay of one board: HLS kernel -> IP -> block design -> bitstream.
# Run `scripts/build_bitstream.sh -h` for usage.
set -euo pipefail

readonly TARGET_VERSION=2024.2
readonly EXIT_TOOL_MISSING=2
readonly EXIT_USAGE=64

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${QTA_PYTHON:-python3}

usage() {
    cat <<EOF
usage: scripts/build_bitstream.sh <board> [--hls-only] [--cosim]

Builds the lora-qta overlay of <board> (a board of host/lora_qta/hw/hardware.toml) with
AMD Vitis HLS and Vivado $TARGET_VERSION (2023.2 and later should work):

  1. build/<board>/qta_config.h, build/<board>/config.tcl  from hardware.toml
  2. Vitis HLS (hls/tcl/run_hls.tcl): csim, csynth[, cosim], export -> build/<board>/ip
  3. Vivado (hls/tcl/build_bitstream.tcl): block design, synthesis, implementation
  4. bitstreams/<board>/: qta_<board>.bit, qta_<board>.hwh, manifest.json, reports/

options:
  --hls-only   stop after the HLS flow (needs no Vivado)
  --cosim      also run C/RTL co-simulation (slow)
  -h, --help   show this help

The tools must be on PATH: source <Xilinx>/Vitis/$TARGET_VERSION/settings64.sh first.
Environment: QTA_JOBS (Vivado run jobs, default 2), QTA_BOARD_REPO (extra board-file
directories), QTA_ALLOW_TIMING_FAILURE=1 (keep a bitstream that misses timing),
QTA_PYTHON (Python 3.11+ running the generators, default python3).

exit status: 0 built, 1 a build step failed, $EXIT_TOOL_MISSING a required tool is missing,
$EXIT_USAGE bad arguments or unknown board.
EOF
}

die() {
    local status=$1
    shift
    echo "build_bitstream.sh: error: $*" >&2
    exit "$status"
}

# The first release number (e.g. 2024.2) in a tool's version banner, or "unknown". Run in
# the build folder, where the tools may leave logs.
tool_version() {
    local banner
    banner=$(cd "$build_dir" && { "$@" 2>/dev/null || true; })
    if [[ $banner =~ v?(20[0-9]{2}\.[0-9]+(\.[0-9]+)?) ]]; then
        echo "${BASH_REMATCH[1]}"
    else
        echo unknown
    fi
}

board_arg=""
hls_only=0
cosim=0
while (($#)); do
    case $1 in
        -h | --help) usage; exit 0 ;;
        --hls-only) hls_only=1 ;;
        --cosim) cosim=1 ;;
        -*) usage >&2; die "$EXIT_USAGE" "unknown option '$1'" ;;
        *)
            [[ -z $board_arg ]] || die "$EXIT_USAGE" "more than one board given ('$board_arg', '$1')"
            board_arg=$1
            ;;
    esac
    shift
done
[[ -n $board_arg ]] || { usage >&2; die "$EXIT_USAGE" "no board given"; }

# --- configuration, from hardware.toml through the generator -----------------------------

command -v "$python" >/dev/null 2>&1 ||
    die "$EXIT_TOOL_MISSING" "'$python' not found; the generators need Python 3.11+ (set QTA_PYTHON)"
"$python" -c 'import tomllib' 2>/dev/null ||
    die "$EXIT_TOOL_MISSING" "'$python' lacks tomllib; the generators need Python 3.11+ (set QTA_PYTHON)"

# Python with the stdlib-only lora_qta.hw generators importable (the package lives in host/).
hwpy() {
    PYTHONPATH="$repo/host${PYTHONPATH:+:$PYTHONPATH}" "$python" "$@"
}

# The canonical board name (the generator also accepts e.g. pynq-z2), or the generator's
# "unknown board ...: hardware.toml describes <boards>" message.
if ! board=$(hwpy - "$board_arg" 2>&1 <<'EOF'
import sys
from lora_qta.errors import UnknownBoardError
from lora_qta.hw.config import config
try:
    print(config().board(sys.argv[1]).name)
except UnknownBoardError as e:
    sys.exit(str(e))
EOF
); then
    die "$EXIT_USAGE" "$board"
fi

build_dir="$repo/build/$board"
out_dir="$repo/bitstreams/$board"
mkdir -p "$build_dir"
hwpy -m lora_qta.hw.generate header --board "$board" -o "$build_dir/qta_config.h"
hwpy -m lora_qta.hw.generate tcl --board "$board" -o "$build_dir/config.tcl"
digest=$(hwpy -m lora_qta.hw.generate digest --board "$board")
# A value of the generated config.tcl (its lines read `set QTA_X {value}`).
config_value() {
    sed -n "s/^set $1 {\(.*\)}\$/\1/p" "$build_dir/config.tcl"
}
name=$(config_value QTA_BITSTREAM_NAME)
vlnv=$(config_value QTA_VLNV)
[[ -n $name && -n $vlnv ]] || die 1 "$build_dir/config.tcl lacks QTA_BITSTREAM_NAME or QTA_VLNV"
echo "build_bitstream.sh: board $board, config $digest -> $build_dir"
# The sources the build starts from: commit, and whether tracked files differ from it.
commit=$(git -C "$repo" rev-parse --verify -q HEAD || echo unknown)
dirty=unknown
if [[ $commit != unknown ]]; then
    dirty=$([[ -z $(git -C "$repo" status --porcelain --untracked-files=no) ]] && echo false || echo true)
fi

# --- tools ---------------------------------------------------------------------------------

missing=()
if command -v vitis_hls >/dev/null 2>&1; then
    hls_tool=vitis_hls
elif command -v vitis-run >/dev/null 2>&1; then
    hls_tool=vitis-run
else
    missing+=("vitis_hls (or vitis-run)")
fi
if ((!hls_only)) && ! command -v vivado >/dev/null 2>&1; then
    missing+=(vivado)
fi
if ((${#missing[@]})); then
    tools=$(printf '%s, ' "${missing[@]}")
    die "$EXIT_TOOL_MISSING" "not on PATH: ${tools%, }. This build targets AMD Vitis HLS and" \
        "Vivado $TARGET_VERSION (2023.2 and later should work); run" \
        "'source <Xilinx>/Vitis/$TARGET_VERSION/settings64.sh' (which also sets up Vivado) first."
fi

if [[ $hls_tool == vitis_hls ]]; then
    hls_version=$(tool_version vitis_hls -version)
else
    hls_version=$(tool_version vitis-run --version)
fi
echo "build_bitstream.sh: $hls_tool $hls_version"
[[ $hls_version == "$TARGET_VERSION" ]] ||
    echo "build_bitstream.sh: warning: $hls_tool $hls_version is not the targeted $TARGET_VERSION" >&2

# --- HLS -----------------------------------------------------------------------------------

steps=(csim csynth)
if ((cosim)); then
    steps+=(cosim)
fi
steps+=(export)
# The tools write their logs into the current directory: run them in the build folder.
if [[ $hls_tool == vitis_hls ]]; then
    (cd "$build_dir" && vitis_hls -f "$repo/hls/tcl/run_hls.tcl" -tclargs "$board" "${steps[@]}")
else
    (cd "$build_dir" && QTA_HLS_BOARD=$board QTA_HLS_STEPS="${steps[*]}" \
        vitis-run --mode hls --tcl "$repo/hls/tcl/run_hls.tcl")
fi
if ((hls_only)); then
    echo "build_bitstream.sh: HLS done; IP in $build_dir/ip (--hls-only: no bitstream)"
    exit 0
fi

# --- Vivado --------------------------------------------------------------------------------

vivado_version=$(tool_version vivado -version)
echo "build_bitstream.sh: vivado $vivado_version"
[[ $vivado_version == "$TARGET_VERSION" ]] ||
    echo "build_bitstream.sh: warning: vivado $vivado_version is not the targeted $TARGET_VERSION" >&2
(cd "$build_dir" && vivado -mode batch -nojournal -log vivado.log \
    -source "$repo/hls/tcl/build_bitstream.tcl" -tclargs "$board")

# --- manifest ------------------------------------------------------------------------------

for f in "$out_dir/$name.bit" "$out_dir/$name.hwh"; do
    [[ -f $f ]] || die 1 "the Vivado flow did not produce $f"
done
mkdir -p "$out_dir/reports"
cp "$build_dir/reports/csynth.rpt" "$out_dir/reports/${name}_csynth.rpt"
"$python" - "$out_dir" "$board" "$digest" "$vlnv" "$name" "$hls_version" "$vivado_version" \
    "$commit" "$dirty" <<'EOF'
import hashlib, json, sys
from datetime import datetime, timezone
from pathlib import Path

out_dir, board, digest, vlnv, name, hls_version, vivado_version, commit, dirty = sys.argv[1:]
out_dir = Path(out_dir)
files = {"bitstream": f"{name}.bit", "hwh": f"{name}.hwh"}
manifest = {
    "board": board,
    "config_digest": digest,
    "vlnv": vlnv,
    "files": files,
    "sha256": {f: hashlib.sha256((out_dir / f).read_bytes()).hexdigest() for f in files.values()},
    "tools": {"vitis_hls": hls_version, "vivado": vivado_version},
    "build_date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    "git_commit": commit,
    "git_dirty": {"true": True, "false": False}.get(dirty),
}
(out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
EOF
echo "build_bitstream.sh: done: $out_dir/{$name.bit,$name.hwh,manifest.json}"

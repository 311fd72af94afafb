"""Check the locks in this folder against pyproject.toml and against each other's metadata.

    python constraints/check_locks.py offline          # no network: what tests/test_locks.py runs
    python constraints/check_locks.py board [--update] [--pip]  # asks PyPI (make check-board-lock)

A lock is an exact set: it is consistent when every requirement of every member (markers
evaluated for the lock's target: Python version and machine, with the extras asked for) is met
by a member, or, on a board, by what the image ships (pynq). That needs no resolver, only each
member's ``Requires-Dist``:

* ``py311.txt`` (PC and CI, Python 3.11 x86_64): the metadata of the installed ``.venv``
  (``make install`` installs exactly this lock), read offline.
* ``py310-aarch64.txt`` (board images, Python 3.10 aarch64): the metadata of the very wheels a
  board would install, fetched once from PyPI by ``board`` and kept in
  ``py310-aarch64.metadata.json``; ``offline`` checks against that snapshot.

``board`` does what pip on a board does, for every pin: reads the PyPI simple index
(``https://pypi.org/simple/<name>/``, JSON), picks the wheel of the pinned version with the
best tag for CPython 3.10 on aarch64 with glibc 2.35 (``packaging.tags`` order, as pip) whose
``Requires-Python`` admits 3.10, and reads that wheel's metadata: its PEP 658 file
(``<wheel url>.metadata``, a few kB) or, where the index has none, the ``METADATA`` member
through HTTP range requests. No wheel is downloaded, torch's 146 MB included. Then it checks
consistency on that metadata and compares it with the snapshot. ``board --pip`` lets pip pick
the wheels instead (``pip install --dry-run --no-deps --report`` with the board's
``--platform`` tags); it agrees, but pip reads metadata files only where the index announces
them, and downloads every wheel elsewhere (the package proxy of the machine this was written
on). pip's resolver is not used for the graph because it evaluates environment markers for the
machine it runs on (x86_64, Python 3.11), not for ``--platform``: it would add torch's x86-only
CUDA packages and drop ``tomli``.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor
from email.parser import Parser
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.tags import compatible_tags, cpython_tags
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


def _env(python: str, machine: str) -> dict[str, str]:
    env = default_environment()
    env.update(python_version=python, python_full_version=f"{python}.0", platform_machine=machine,
               sys_platform="linux", platform_system="Linux", os_name="posix",
               implementation_name="cpython", platform_python_implementation="CPython")
    return env


BOARD_GLIBC = 35  # Ubuntu 22.04, the base of the PYNQ 3.x images
BOARD_PLATFORMS = [f"manylinux_2_{g}_aarch64" for g in range(BOARD_GLIBC, 16, -1)] + [
    "manylinux2014_aarch64", "linux_aarch64"]

# pynq as the board images ship it (installed with --no-deps by the image build) and what each
# version requires (from its PKG-INFO on PyPI). The board lock leaves these alone.
IMAGE_PYNQ = {
    "3.0.1": ["pynqutils>=0.0.1", "pynqmetadata>=0.0.1", "setuptools>=24.2.0", "cffi", "numpy",
              "nest_asyncio"],
    "3.1.2": ["pynqmetadata", "pynqutils", "setuptools>=24.2.0", "cffi", "numpy<2.0", "nest_asyncio",
              "grpcio==1.64.0", "grpcio-tools==1.64.0"],
}
IMAGE_ONLY = {"pynq", "pynqutils", "pynqmetadata"}

TARGETS = {
    "py311": dict(file="py311.txt", env=_env("3.11", "x86_64"), extras={"test", "rtl"},
                  # installed with --no-deps by make install (only its ap_int headers are used);
                  # pip itself is pinned so that every install runs the same resolver
                  extra_roots=["hls4ml", "pip"], image={}),
    "py310-aarch64": dict(file="py310-aarch64.txt", env=_env("3.10", "aarch64"), extras={"test"},
                          extra_roots=["hls4ml"], image={"pynq": sorted(IMAGE_PYNQ)}),
}
SNAPSHOT = HERE / "py310-aarch64.metadata.json"


def read_lock(path: Path) -> dict[str, str]:
    """``name==version`` lines of a lock (comments and blank lines skipped), by canonical name."""
    pins = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep or any(c in version for c in ",;<>=!~ "):
            raise ValueError(f"{path.name}: {raw!r} is not an exact pin name==version")
        key = canonicalize_name(name)
        if key in pins:
            raise ValueError(f"{path.name}: {name} is pinned twice")
        pins[key] = version
    return pins


def project_requirements(extras: set[str]) -> list[Requirement]:
    """[project].dependencies and the given optional-dependencies of pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project.get("dependencies", [])]
    for extra in sorted(extras):
        reqs += [Requirement(r) for r in project.get("optional-dependencies", {}).get(extra, [])]
    return reqs


def _applies(req: Requirement, env: dict, extra: str = "") -> bool:
    return req.marker is None or req.marker.evaluate({**env, "extra": extra})


def check_set(target: str, pins: dict[str, str], requires: dict[str, list[str]]) -> list[str]:
    """Problems of the lock ``pins`` for ``target``, given each member's Requires-Dist."""
    spec = TARGETS[target]
    env, image = spec["env"], spec["image"]
    problems: list[str] = []
    reached: set[str] = set()
    todo: list[tuple[Requirement, str]] = [(r, "pyproject.toml") for r in project_requirements(spec["extras"])
                                           if _applies(r, env)]
    todo += [(Requirement(n), "the lock's own roots") for n in spec["extra_roots"]]
    seen: set[tuple[str, frozenset]] = set()
    while todo:
        req, by = todo.pop()
        name = canonicalize_name(req.name)
        if name in image:
            bad = [v for v in image[name] if not req.specifier.contains(v, prereleases=True)]
            if bad:
                problems.append(f"{by} requires {req}, which the board image's {name} {', '.join(bad)} does not meet")
            continue
        if name not in pins:
            problems.append(f"{by} requires {req}, which the lock does not pin")
            continue
        if not req.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{by} requires {req}, but the lock pins {name}=={pins[name]}")
        reached.add(name)
        key = (name, frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        if name not in requires:
            problems.append(f"no metadata for {name}=={pins[name]}")
            continue
        for dep in requires[name]:
            dreq = Requirement(dep)
            if any(_applies(dreq, env, x) for x in ({""} | set(req.extras))):
                todo.append((dreq, f"{name} {pins[name]}"))
    for name in sorted(set(pins) - reached):
        problems.append(f"the lock pins {name}=={pins[name]}, which nothing requires")
    return problems


def check_image(pins: dict[str, str]) -> list[str]:
    """The board lock leaves pynq and its own packages to the image and meets every image pynq's
    requirements on the packages they share (numpy<2 for 3.1)."""
    problems = [f"the board lock pins {n}, which the image ships (it must not be replaced)"
                for n in sorted(IMAGE_ONLY & set(pins))]
    for version, reqs in IMAGE_PYNQ.items():
        for r in map(Requirement, reqs):
            name = canonicalize_name(r.name)
            if name in pins and not r.specifier.contains(pins[name], prereleases=True):
                problems.append(f"pynq {version} on the image requires {r}, but the lock pins {name}=={pins[name]}")
    return problems


def board_tag_order() -> list:
    """The tags CPython 3.10 on aarch64 (glibc 2.35) installs, most preferred first (as pip)."""
    return list(cpython_tags((3, 10), abis=["cp310"], platforms=BOARD_PLATFORMS)) + list(
        compatible_tags((3, 10), "cp310", platforms=BOARD_PLATFORMS))


def check_snapshot(pins: dict[str, str], snap: dict[str, dict]) -> list[str]:
    """The snapshot describes exactly the pinned versions, with wheels a board can install."""
    problems = []
    if set(snap) != set(pins):
        problems.append(f"metadata snapshot and lock differ: only in lock {sorted(set(pins) - set(snap))}, "
                        f"only in snapshot {sorted(set(snap) - set(pins))} (run make check-board-lock UPDATE=1)")
    tags = set(board_tag_order())
    for name, meta in sorted(snap.items()):
        if name in pins and Version(meta["version"]) != Version(pins[name]):
            problems.append(f"snapshot has {name} {meta['version']}, the lock pins {pins[name]}")
        _, _, _, wheel_tags = parse_wheel_filename(meta["wheel"])
        if not wheel_tags & tags:
            problems.append(f"{meta['wheel']} does not install on CPython 3.10 aarch64 (glibc 2.{BOARD_GLIBC})")
        rp = meta.get("requires_python")
        if rp and not SpecifierSet(rp).contains("3.10.0", prereleases=True):
            problems.append(f"{name} {meta['version']} requires Python {rp}")
    return problems


def installed_requires(pins: dict[str, str]) -> tuple[dict[str, list[str]], list[str]]:
    """Requires-Dist of the installed distributions, and where they differ from the pins."""
    from importlib import metadata

    requires, problems = {}, []
    for name, version in pins.items():
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            problems.append(f"{name}=={version} is pinned but not installed")
            continue
        if not SpecifierSet(f"=={version}").contains(dist.version, prereleases=True):
            problems.append(f"installed {name} {dist.version}, the lock pins {version}")
        requires[name] = dist.requires or []
    return requires, problems


def offline() -> list[str]:
    """Everything that needs no network (tests/test_locks.py)."""
    problems = []
    board = read_lock(HERE / TARGETS["py310-aarch64"]["file"])
    snap = json.loads(SNAPSHOT.read_text())
    problems += check_snapshot(board, snap)
    problems += check_image(board)
    problems += check_set("py310-aarch64", board, {n: m["requires_dist"] for n, m in snap.items()})
    if sys.version_info[:2] == (3, 11):
        pc = read_lock(HERE / TARGETS["py311"]["file"])
        requires, found = installed_requires(pc)
        problems += found + check_set("py311", pc, requires)
    return problems


INDEX = "https://pypi.org/simple"


def _get(url: str, accept: str | None = None) -> bytes:
    headers = {"Accept-Encoding": "gzip", **({"Accept": accept} if accept else {})}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=120) as resp:
        data = resp.read()
        return gzip.decompress(data) if resp.headers.get("Content-Encoding") == "gzip" else data


def board_wheel(name: str, version: str, rank: dict) -> dict:
    """The file of ``name==version`` that pip on a board picks from the index."""
    index = json.loads(_get(f"{INDEX}/{name}/", "application/vnd.pypi.simple.v1+json"))
    best = None
    for f in index["files"]:
        if not f["filename"].endswith(".whl"):
            continue
        try:
            _, v, _, tags = parse_wheel_filename(f["filename"])
        except ValueError:  # old uploads with names that break today's rules
            continue
        r = min((rank[t] for t in tags if t in rank), default=None)
        rp = f.get("requires-python")
        if v != Version(version) or r is None or (rp and not SpecifierSet(rp).contains("3.10", prereleases=True)):
            continue
        if best is None or r < best[0]:
            best = (r, f)
    if best is None:
        raise LookupError(f"PyPI has no wheel of {name}=={version} for CPython 3.10 aarch64 (glibc 2.{BOARD_GLIBC})")
    return best[1]


class _RemoteFile(io.RawIOBase):
    """A wheel on the index read through HTTP range requests, so that ``zipfile`` fetches only
    its central directory and the METADATA member (a few requests, some kB)."""

    def __init__(self, url: str, size: int):
        self.url, self.size, self.pos = url, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = {0: 0, 1: self.pos, 2: self.size}[whence] + offset
        return self.pos

    def readinto(self, buf) -> int:
        n = min(len(buf), self.size - self.pos)
        if n <= 0:
            return 0
        req = urllib.request.Request(self.url, headers={"Range": f"bytes={self.pos}-{self.pos + n - 1}"})
        with urllib.request.urlopen(req, timeout=120) as resp:
            if resp.status != 206:
                raise OSError(f"{self.url}: the server ignores range requests")
            data = resp.read()
        buf[:len(data)] = data
        self.pos += len(data)
        return len(data)


def wheel_metadata(url: str, size: int | None) -> str:
    """The METADATA of a wheel: its PEP 658 file if the index has one, else the member itself,
    read with range requests; the whole wheel only if the server ignores ranges."""
    try:
        return _get(url + ".metadata").decode()
    except urllib.error.HTTPError as e:
        if e.code != 404:
            raise
    try:
        source = io.BufferedReader(_RemoteFile(url, size), 1 << 16) if size else io.BytesIO(_get(url))
        with zipfile.ZipFile(source) as z:
            return z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    except OSError:
        with zipfile.ZipFile(io.BytesIO(_get(url))) as z:
            return z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()


def fetch_board_metadata(lock: Path) -> dict[str, dict]:
    """For every pin, the wheel a board gets from PyPI and its metadata (no wheel downloaded)."""
    pins = read_lock(lock)
    rank = {t: i for i, t in enumerate(board_tag_order())}

    def one(name: str) -> tuple[str, dict]:
        f = board_wheel(name, pins[name], rank)
        meta = Parser().parsestr(wheel_metadata(f["url"], f.get("size")), headersonly=True)
        return name, {"version": meta["Version"], "requires_dist": meta.get_all("Requires-Dist") or [],
                      "requires_python": meta.get("Requires-Python"), "wheel": f["filename"],
                      "sha256": f.get("hashes", {}).get("sha256")}

    with ThreadPoolExecutor(8) as pool:
        return dict(sorted(pool.map(one, pins)))


def fetch_board_metadata_pip(lock: Path) -> dict[str, dict]:
    """The same, asked of pip (``--dry-run --no-deps --report`` with the board's platform tags)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-deps",
               "--quiet", "--report", str(report), "--only-binary=:all:", "--implementation", "cp",
               "--python-version", "3.10", "--abi", "cp310"]
        for p in BOARD_PLATFORMS:
            cmd += ["--platform", p]
        cmd += ["--index-url", INDEX, "-r", str(lock)]
        # PyPI only, as on a board: no local find-links, extra indexes or machine-wide constraints
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") or k == "PIP_CERT"}
        env["PIP_CONFIG_FILE"] = os.devnull
        subprocess.run(cmd, check=True, env=env)
        items = json.loads(report.read_text())["install"]
    snap = {}
    for item in items:
        meta, info = item["metadata"], item["download_info"]
        snap[canonicalize_name(meta["name"])] = {
            "version": meta["version"],
            "requires_dist": meta.get("requires_dist", []),
            "requires_python": meta.get("requires_python"),
            "wheel": info["url"].rsplit("/", 1)[-1],
            "sha256": info.get("archive_info", {}).get("hashes", {}).get("sha256"),
        }
    return dict(sorted(snap.items()))


def _rx_bytes() -> int:
    """Bytes received by this machine's network interfaces (Linux), to measure a check."""
    try:
        lines = Path("/proc/net/dev").read_text().splitlines()[2:]
    except OSError:
        return 0
    return sum(int(line.split(":", 1)[1].split()[0]) for line in lines if not line.strip().startswith("lo:"))


def board(update: bool, use_pip: bool = False) -> list[str]:
    lock = HERE / TARGETS["py310-aarch64"]["file"]
    pins = read_lock(lock)
    rx0, t0 = _rx_bytes(), time.perf_counter()
    fresh = (fetch_board_metadata_pip if use_pip else fetch_board_metadata)(lock)
    print(f"{'pip' if use_pip else 'PyPI index'}: {len(fresh)} pins -> board wheels in "
          f"{time.perf_counter() - t0:.1f} s, {(_rx_bytes() - rx0) / 1e6:.1f} MB received by this machine")
    problems = check_snapshot(pins, fresh) + check_image(pins)
    problems += check_set("py310-aarch64", pins, {n: m["requires_dist"] for n, m in fresh.items()})
    if update:
        SNAPSHOT.write_text(json.dumps(fresh, indent=1) + "\n")
        print(f"wrote {SNAPSHOT.relative_to(ROOT)}")
    else:
        old = json.loads(SNAPSHOT.read_text())
        for name in sorted(set(old) & set(fresh)):
            a, b = old[name], fresh[name]
            if (a["version"], a["requires_dist"], a["requires_python"]) != (
                    b["version"], b["requires_dist"], b["requires_python"]):
                problems.append(f"PyPI's metadata of {name} {b['version']} differs from the snapshot "
                                "(run make check-board-lock UPDATE=1 and review the diff)")
            elif a["sha256"] != b["sha256"]:
                print(f"note: PyPI now offers {b['wheel']} for {name} {b['version']} "
                      f"(snapshot: {a['wheel']}); same metadata")
    return problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["offline", "board"])
    ap.add_argument("--update", action="store_true", help="board: rewrite the metadata snapshot")
    ap.add_argument("--pip", action="store_true", help="board: let pip pick the wheels (downloads them "
                    "where the index does not announce PEP 658 metadata)")
    args = ap.parse_args(argv)
    problems = offline() if args.what == "offline" else board(args.update, args.pip)
    for p in problems:
        print("problem:", p)
    print(f"{args.what}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

"""Where the package writes: the one check that a folder can be made at a path."""

from __future__ import annotations

from pathlib import Path


def file_in_the_way(path: Path) -> Path | None:
    """The file standing where ``path`` or a folder above it would be (the nearest existing
    entry on the way up, when it is not a folder), else None: a folder can be made at ``path``
    as far as files are concerned."""
    for p in (path, *path.absolute().parents):
        if p.exists():
            return None if p.is_dir() else p
    return None

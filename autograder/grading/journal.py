"""The journal: one small JSON record per finished submission, each written atomically.

A record is written last, after the gradebook transaction and the feedback page, so its presence means
"this exact submission (by content digest and course fingerprint) is done". A run that is killed midway
leaves either a whole record or none (write to a temporary file, fsync, ``os.replace``), and the next run
skips exactly the submissions that have one. Records also hold the verdicts, so the gradebook and the
feedback can be rebuilt from them without running anything again.

Layout: ``<root>/<student>/<assignment>.json``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from .intake import safe_name


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` so that a reader (or a crash) sees the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class Journal:
    """Completed submissions under ``root``: :meth:`get` a record, :meth:`put` one (atomically)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, student: str, assignment: str) -> Path:
        return self.root / safe_name(student) / f"{safe_name(assignment)}.json"

    def get(self, student: str, assignment: str) -> dict | None:
        """The record of (student, assignment), or None if there is none or it is unreadable."""
        try:
            return json.loads(self.path(student, assignment).read_text())
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return None

    def put(self, record: dict) -> None:
        data = json.dumps(record, indent=1, sort_keys=True).encode()
        atomic_write(self.path(record["student"], record["assignment"]), data)

    def records(self) -> list[dict]:
        """Every readable record, sorted by (student, assignment)."""
        out = []
        for path in sorted(self.root.glob("*/*.json")):
            try:
                out.append(json.loads(path.read_text()))
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
        return sorted(out, key=lambda r: (r["student"], r["assignment"]))

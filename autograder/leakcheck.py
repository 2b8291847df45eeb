"""Prove that nothing of a solution or a hidden test ships: compare the secret lines of ``solutions/`` with
every file that is released (student notebooks, zips, the built book).

What counts as secret, in each source notebook ``solutions/<a>/<a>.ipynb``:

* the lines between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` (a solution cell without those markers
  is secret as a whole: nbgrader replaces the whole cell, e.g. a written answer);
* the lines between ``### BEGIN HIDDEN TESTS`` and ``### END HIDDEN TESTS``;
* the lines between ``=== BEGIN MARK SCHEME ===`` and ``=== END MARK SCHEME ===``.

A secret line *leaks* when its text (whitespace collapsed) appears anywhere in the text of a shipped file:
a notebook's cell sources and outputs, an HTML page with its tags stripped, any other text file, and the
same for every member of a zip.

The threshold. Lines shorter than :data:`MIN_SECRET_CHARS` (24) characters after collapsing whitespace are
not compared: ``return out``, ``m = m_new`` or ``B, H, T, D = q.shape`` occur in every attention code base,
so finding them in the book says nothing. 24 characters is about one real statement
(``l = l * torch.exp(m - m_new)`` is 28). Text that also occurs *outside* the secret blocks of any source
notebook (a task statement quoting a formula, say) is public by definition and not compared either.

Reviewed exceptions. :data:`BOOK_MAY_SHOW` lists the few secret lines the *book* may contain because a chapter
teaches them (each with the reason); they are still leaks anywhere else (student notebooks, zips). Keep it
short: every entry is a decision that the book gives that line of an answer away.

Run ``python -m autograder.leakcheck PATH...`` (files or folders); exit status 1 lists every leak.
"""

from __future__ import annotations

import argparse
import html
import io
import json
import re
import sys
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = ROOT / "solutions"

#: secret lines shorter than this (whitespace collapsed) are too generic to prove a leak
MIN_SECRET_CHARS = 24

#: secret line -> why the built book may show it (in files under a folder named ``book`` only)
BOOK_MAY_SHOW = {
    "l_i = l_i * alpha + tl.sum(p, 1)": (
        "chapter 7 prints the course's own forward kernel (kernels/flash_fwd.py), whose running-sum update is "
        "this line; Task 7.3 asks for the same recurrence in a smaller kernel, after the chapter derives it"
    ),
}

# (begin marker, end marker, what the block is); markers are nbgrader 0.9's defaults
_BLOCKS = (
    ("### BEGIN SOLUTION", "### END SOLUTION", "solution"),
    ("### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS", "hidden test"),
    ("=== BEGIN MARK SCHEME ===", "=== END MARK SCHEME ===", "mark scheme"),
)
_MARKERS = {m for b in _BLOCKS for m in b[:2]}
_TAG = re.compile(r"<[^>]*>")
_BINARY_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".ico", ".woff", ".woff2", ".ttf", ".eot", ".pdf", ".db"}


@dataclass(frozen=True)
class Secret:
    """One secret line: its whitespace-collapsed ``text``, what it is (``kind``) and where it comes from."""

    text: str
    kind: str
    origin: str


@dataclass(frozen=True)
class Leak:
    secret: Secret
    shipped: str  # the file (``archive.zip!member`` inside a zip) where the secret was found

    def __str__(self) -> str:
        return f"{self.shipped}: {self.secret.kind} line from {self.secret.origin}: {self.secret.text!r}"


def normalise(text: str) -> str:
    """Collapse every run of whitespace to one space and strip the ends."""
    return " ".join(text.split())


def _cell_text(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def split_cell(cell: dict) -> tuple[list[tuple[str, str]], list[str]]:
    """``(secret lines as (kind, line), public lines)`` of one source-notebook cell."""
    lines = _cell_text(cell).splitlines()
    meta = cell.get("metadata", {}).get("nbgrader", {})
    has_solution_markers = any(line.strip() == _BLOCKS[0][0] for line in lines)
    if meta.get("solution") and not has_solution_markers:
        kind = "written answer" if cell.get("cell_type") == "markdown" else "solution"
        return [(kind, line) for line in lines], []
    secret, public, inside = [], [], None
    for line in lines:
        stripped = line.strip()
        starts = [kind for begin, _, kind in _BLOCKS if stripped == begin]
        if starts:
            inside = starts[0]
        elif inside and stripped == next(end for _, end, kind in _BLOCKS if kind == inside):
            inside = None
        elif stripped not in _MARKERS:
            (secret.append((inside, line)) if inside else public.append(line))
    return secret, public


def collect_secrets(solutions: Path = SOLUTIONS) -> list[Secret]:
    """Every secret line of every ``solutions/*/*.ipynb`` that is long enough and not also public."""
    raw: list[Secret] = []
    public: list[str] = []
    for nb_path in sorted(Path(solutions).glob("*/*.ipynb")):
        nb = json.loads(nb_path.read_text())
        for i, cell in enumerate(nb.get("cells", [])):
            secret, pub = split_cell(cell)
            public += [normalise(line) for line in pub]
            grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id", f"cell {i}")
            origin = f"{nb_path.relative_to(nb_path.parent.parent)} [{grade_id}]"
            raw += [Secret(normalise(line), kind, origin) for kind, line in secret]
    public_text = "\n".join(public)  # a secret quoted in a public cell (a task statement, say) ships by design
    unique = {s.text: s for s in raw if len(s.text) >= MIN_SECRET_CHARS and s.text not in public_text}
    return list(unique.values())


# --- what ships, as text -------------------------------------------------------------------------------------
def notebook_text(data: bytes) -> str:
    """The cell sources and outputs of a notebook (the parsed JSON, so escapes do not hide anything)."""
    try:
        nb = json.loads(data)
    except ValueError:
        return data.decode("utf-8", "replace")
    parts = []
    for cell in nb.get("cells", []):
        parts.append(_cell_text(cell))
        for out in cell.get("outputs", []):
            parts.append(_joined(out.get("text", "")))
            parts += ["\n".join(out.get("traceback", [])), str(out.get("evalue", ""))]
            for mime, value in out.get("data", {}).items():
                if mime.startswith("text/"):
                    parts.append(html_text(_joined(value)) if mime == "text/html" else _joined(value))
    return "\n".join(parts)


def _joined(value) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def html_text(text: str) -> str:
    """The text of an HTML page: tags removed (syntax highlighting splits code into spans), entities decoded."""
    return html.unescape(_TAG.sub("", text))


def file_text(name: str, data: bytes) -> str | None:
    """The searchable text of one shipped file, or ``None`` for a binary file."""
    suffix = Path(name).suffix.lower()
    if suffix in _BINARY_SUFFIXES or b"\0" in data[:8192]:
        return None
    if suffix == ".ipynb":
        return notebook_text(data)
    text = data.decode("utf-8", "replace")
    return html_text(text) if suffix in (".html", ".htm", ".xml", ".svg") else text


def shipped_texts(paths: Iterable[Path]) -> Iterator[tuple[str, str]]:
    """``(label, normalised text)`` for every shipped file under ``paths``, descending into zips."""
    for path in paths:
        path = Path(path)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            yield from _texts_of(str(f), f.read_bytes())


def _texts_of(label: str, data: bytes) -> Iterator[tuple[str, str]]:
    if label.lower().endswith(".zip"):
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            for member in zf.namelist():
                if not member.endswith("/"):
                    yield from _texts_of(f"{label}!{member}", zf.read(member))
        return
    text = file_text(label, data)
    if text:
        yield label, normalise(text)


def in_book(label: str) -> bool:
    """Whether a shipped file belongs to the built book (``.../book/...``, e.g. ``build/release/book/``)."""
    return "book" in Path(label.split("!")[0]).parts


def find_leaks(secrets: list[Secret], shipped: Iterable[tuple[str, str]]) -> list[Leak]:
    """Every (secret, shipped file) pair where the secret's text occurs in the file's text, except the
    reviewed :data:`BOOK_MAY_SHOW` lines in book files."""
    return [
        Leak(s, label)
        for label, text in shipped
        for s in secrets
        if s.text in text and not (s.text in BOOK_MAY_SHOW and in_book(label))
    ]


def check_paths(paths: Iterable[Path], solutions: Path = SOLUTIONS) -> list[Leak]:
    """The leaks of ``solutions``' secrets into the files under ``paths``."""
    secrets = collect_secrets(solutions)
    if not secrets:
        raise ValueError(f"no secret lines found under {solutions}: nothing to compare (wrong folder?)")
    return find_leaks(secrets, shipped_texts(paths))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autograder.leakcheck", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, help="shipped files or folders (zips are opened)")
    parser.add_argument("--solutions", type=Path, default=SOLUTIONS, help="the source notebooks (default: solutions/)")
    args = parser.parse_args(argv)
    missing = [p for p in args.paths if not p.exists()]
    if missing:
        parser.error(f"no such file or folder: {', '.join(map(str, missing))}")
    leaks = check_paths(args.paths, args.solutions)
    for leak in leaks:
        print(f"LEAK {leak}")
    n = len(collect_secrets(args.solutions))
    print(f"leakcheck: {len(leaks)} leak(s); compared {n} secret lines (>= {MIN_SECRET_CHARS} chars) "
          f"with {', '.join(map(str, args.paths))}")
    return 1 if leaks else 0


if __name__ == "__main__":
    sys.exit(main())

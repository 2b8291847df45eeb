"""Build the book: execute every chapter (cached) and write the static site to build/book/html.

    .venv/bin/python book/build.py            # what `make book` runs
    .venv/bin/python book/build.py --fresh    # re-read every page (the execution cache is still used)

Warnings are errors, and a cell that raises fails the build (``nb_execution_raise_on_error``), so a clean
build means every cell of every chapter ran. The execution cache lives in build/book/.jupyter_cache; it is
keyed on each chapter's text, so this script also drops it when the code the chapters import changes.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
from pathlib import Path

from jupyter_book.sphinx import build_sphinx

BOOK = Path(__file__).resolve().parent
ROOT = BOOK.parent
OUT = ROOT / "build" / "book"
VENDOR = OUT / "vendor"


def code_fingerprint() -> str:
    """A hash of the code the chapters import: the book helpers, the package, the kernels, recorded benchmarks."""
    h = hashlib.sha256()
    files = [BOOK / "bookhelpers.py", BOOK / "bookanim.py", *sorted((ROOT / "attn_course").glob("*.py")),
             *sorted((ROOT / "kernels").glob("*.py")), *sorted((ROOT / "benchmarks" / "results").glob("*.json"))]
    for f in files:
        if f.is_file():
            h.update(f.relative_to(ROOT).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def refresh_cache_if_code_changed(out: Path) -> bool:
    """Drop the execution cache when the imported code changed; True if every page must be re-read."""
    stamp, cache = out / ".code-fingerprint", out / ".jupyter_cache"
    if stamp.is_file() and stamp.read_text() == code_fingerprint():
        return False
    if cache.exists():
        print("book/build.py: the code the chapters import changed; re-executing every chapter")
        shutil.rmtree(cache)
    stamp.unlink(missing_ok=True)
    return True


def build(book: Path, out: Path, *, fresh: bool = False) -> int:
    """Build ``book`` into ``out/html`` (doctrees and the execution cache beside it); 0 on success."""
    for needed in (VENDOR / "mathjax" / "tex-svg.js", VENDOR / "widgets" / "embed.js"):
        if not needed.is_file():
            print(f"book/build.py: {needed} is missing; run `make book-vendor` (bash book/vendor.sh {VENDOR})",
                  file=sys.stderr)
            return 2
    out.mkdir(parents=True, exist_ok=True)
    fresh = refresh_cache_if_code_changed(out) or fresh
    os.environ["ATTN_BOOK_VENDOR"] = str(VENDOR)  # read by _ext/offline_book.py
    # One BLAS thread per kernel: the build machine has two cores and the chapters are small.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    result = build_sphinx(
        book,
        out / "html",
        noconfig=True,
        doctreedir=out / "doctrees",
        path_config=book / "_config.yml",
        confoverrides={"nb_execution_cache_path": str(out / ".jupyter_cache"), "latex_individualpages": False},
        warningiserror=True,
        keep_going=True,
        freshenv=fresh,
        force_all=fresh,
    )
    if result:
        print("book/build.py: the build failed (see the warnings above)", file=sys.stderr)
        return 1
    if fresh:  # written last, so that a failed build is retried in full next time
        (out / ".code-fingerprint").write_text(code_fingerprint())
    print(f"book/build.py: the book is in {out / 'html'} (open index.html)")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fresh", action="store_true", help="re-read every page (cells still come from the cache)")
    p.add_argument("--book", type=Path, default=BOOK, help="the book's source folder (default: book/)")
    p.add_argument("--out", type=Path, default=OUT, help="output folder; the site goes to OUT/html")
    args = p.parse_args(argv)
    return build(args.book.resolve(), args.out.resolve(), fresh=args.fresh)


if __name__ == "__main__":
    sys.exit(main())

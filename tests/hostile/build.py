"""Build the hostile-submission corpus: ``python tests/hostile/build.py`` writes ``tests/hostile/*.ipynb`` and
``manifest.json`` (committed; ``tests/test_sandbox_hostile.py`` checks they match this script).

Every notebook is a ch3_sdpa submission. Unless the attack says otherwise it defines an *honest*
``attention_weights`` (correct, so it deserves the ``ch3-weights-test`` points when the run completes) and a
*wrong* ``scaled_dot_product_attention`` (it forgets the 1/sqrt(d_k) scale, so it deserves nothing), then
attacks. The question each test asks: does the attack change any output or verdict, leak anything, or escape?

Files that are not notebooks at all (empty, not JSON, 200 MB) are made by the tests at run time, not here.
Marker strings that the attacks look for are assembled at run time (``"### BEGIN " + "SOLUTION"``) so that a
notebook never finds itself.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent

HONEST = '''import math
import torch

def attention_weights(q, k, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # [..., T_q, T_k]
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1).nan_to_num(0.0)  # fully masked rows -> zeros'''

WRONG = '''def scaled_dot_product_attention(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1)  # forgot the 1/sqrt(d_k) scale
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1).nan_to_num(0.0) @ v'''

# the secret markers an attack hunts for, spelled so that the notebook itself never contains them
HUNT = '''import os
MARKERS = [b"### BEGIN " + b"SOLUTION", b"### BEGIN " + b"HIDDEN TESTS", b"SQLite " + b"format 3",
           b"SECRET" + b"-TOKEN-", b"GRA" + b"DED = {"]
SKIP = ("/proc", "/sys", "/dev", "/usr")
def hunt(top="/"):
    found = []
    for root, dirs, files in os.walk(top):
        if root.startswith(SKIP) or "site-packages" in root or "/lib/python3" in root:
            dirs[:] = []
            continue
        for name in files:
            path = os.path.join(root, name)
            try:
                with open(path, "rb") as f:
                    data = f.read(4_000_000)
            except OSError:
                continue
            found += [f"{m.decode()} in {path}" for m in MARKERS if m in data]
    return found
for hit in hunt():
    print("LEAK-FOUND", hit)'''
# the direct guesses get a cell of their own, before the walk: a walk slowed past the cell time limit (cold disk
# cache) must not keep them from running
GUESS = '''import os, attn_course
repo = os.path.dirname(os.path.dirname(attn_course.__file__))
print("REPO-LISTING", sorted(os.listdir(repo)))
for guess in ["solutions/ch3_sdpa/ch3_sdpa.ipynb", "build/course/gradebook.db", "autograder/specs/ch3_sdpa.py",
              "tests/conftest.py", "build/course/submitted"]:
    try:
        print("LEAK-OPENED", guess, len(open(os.path.join(repo, guess), "rb").read()))
    except OSError as e:
        print("BLOCKED", guess, type(e).__name__)'''


def cell(source: str, grade_id: str | None = None, test: bool = False, points: float = 0.0) -> dict:
    meta = {}
    if grade_id:
        meta["nbgrader"] = {"grade": test, "solution": not test, "locked": test, "grade_id": grade_id,
                            "schema_version": 3, **({"points": points} if test else {})}
    return {"cell_type": "code", "execution_count": None, "metadata": meta, "outputs": [], "source": source}


def markdown(text: str) -> dict:
    return {"cell_type": "markdown", "metadata": {}, "source": text}


def notebook(*cells: dict) -> dict:
    return {"cells": list(cells), "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
            "language": "python"}}, "nbformat": 4, "nbformat_minor": 5}


def submission(*attack: str, honest: bool = True, wrong: bool = True, tests: bool = True) -> dict:
    """The usual layout: answers, the released test cells (never run by the grader), then the attack cells."""
    cells = [markdown("# Task 3.1: attention weights")]
    if honest:
        cells.append(cell(HONEST, "ch3-weights"))
    if tests:
        cells.append(cell("from attn_course import check\ncheck.attention_weights(attention_weights)",
                          "ch3-weights-test", test=True, points=3.0))
    if wrong:
        cells.append(cell(WRONG, "ch3-sdpa"))
    if tests:
        cells.append(cell("check.scaled_dot_product_attention(scaled_dot_product_attention)", "ch3-sdpa-test",
                          test=True, points=2.0))
    cells += [cell(src) for src in attack]
    cells.append(cell('print("LAST-CELL-RAN")'))
    return notebook(*cells)


# name -> (what it tries, the notebook, expected outcome, "log_has": strings the log must show,
#          "log_lacks": strings it must not, limits overrides for the test run)
CORPUS = {
    "infinite_loop": ("a cell that never ends", submission("while True:\n    pass"), "ok",
                      ["LAST-CELL-RAN"], [], {}),
    "infinite_loop_no_alarm": ("ignores the per-cell alarm and spins forever: only the wall clock stops it",
                               submission("import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\n"
                                          "while True:\n    pass"), "timeout", [], ["LAST-CELL-RAN"], {}),
    "slow_traceback": ("makes IPython's traceback formatter slower than the alarm's repeat, then runs out of time",
                       submission("import time\nimport IPython.core.ultratb as ultratb\n"
                                  "formatter = ultratb.ListTB.structured_traceback\n"
                                  "def slow(*args, **kwargs):\n    end = time.monotonic() + 2\n"
                                  "    while time.monotonic() < end:\n        pass\n"
                                  "    return formatter(*args, **kwargs)\n"
                                  "ultratb.ListTB.structured_traceback = slow",
                                  "def spin():\n    while True:\n        pass\nspin()"),
                       # (the timed-out cell's traceback does not go through IPython's formatter: it still shows)
                       "ok", ["LAST-CELL-RAN", "TimeLimitExceeded", "in spin"], [], {}),
    "fork_bomb": ("forks until it cannot, every child forking too",
                  submission("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
                             # the next cell starts alone in the sandbox: every child killed and reaped
                             "import os\nleft = [p for p in os.listdir('/proc') if p.isdigit() and\n"
                             "        int(p) not in (1, os.getpid())]\nprint('PROCESSES-LEFT', len(left))"),
                  "ok", ["LAST-CELL-RAN", "PROCESSES-LEFT 0", "this cell left behind]"], [], {}),
    "memory_bomb": ("allocates until refused: a bytearray, a list of chunks, a shared anonymous mapping",
                    submission("big = bytearray(64 * 2**30)",
                               # refused, it lets go of what it ate and says so in one line. It used to
                               # re-raise; IPython's traceback formatter then needed memory (it once hit ENOMEM)
                               # and time: under a loaded CI it ran past the 3 s cell alarm, and its long
                               # TimeLimitExceeded traceback pushed every "MemoryError" out of the log's tail.
                               # Filling the 2 GiB limit 128 MiB at a time can itself outlast the alarm on a
                               # loaded machine, so the log must show the first cell's MemoryError (refused
                               # at once, whatever the load), not necessarily this cell's line
                               "def eat():\n    chunks = []\n    try:\n        while True:\n"
                               "            chunks.append(bytearray(2**27))\n    except MemoryError as e:\n"
                               "        n, refusal = len(chunks), type(e).__name__\n    chunks.clear()\n"
                               "    print(f'EAT-REFUSED with {refusal} after {n} chunks of 128 MiB')\n"
                               "eat()",
                               "import mmap\nshared = mmap.mmap(-1, 64 * 2**30)\nshared[-1] = 1"),
                    "ok", ["LAST-CELL-RAN", "MemoryError"], [], {}),
    "big_output": ("prints 100 MB through Python and 100 MB straight to the file descriptor",
                   submission("print('x' * 100_000_000)", "import os\nos.write(1, b'y' * 100_000_000)"),
                   # (each cell has its own output budget: the first cell's flood does not hide the last's line)
                   "ok", ["LAST-CELL-RAN"], [], {}),
    "big_file": ("writes a 200 MB file into its scratch folder and fills /tmp",
                 submission("with open('big.bin', 'wb') as f:\n    f.write(b'z' * 200_000_000)",
                            "import os\nn = 0\ntry:\n    while True:\n        with open(f'/tmp/f{n}', 'wb') as f:\n"
                            "            f.write(b'z' * 2**24)\n        n += 1\nexcept OSError as e:\n"
                            "    print('DISK-FULL', n, type(e).__name__)"),
                 "ok", ["LAST-CELL-RAN", "DISK-FULL"], [], {}),
    "os_exit": ("os._exit(0) mid-notebook", submission("import os\nos._exit(0)"), "crashed", [],
                ["LAST-CELL-RAN"], {}),
    "sys_exit": ("sys.exit(0) mid-notebook (Jupyter records it as an error in the cell and goes on)",
                 submission("import sys\nsys.exit(0)"), "ok", ["LAST-CELL-RAN"], [], {}),
    "segfault": ("dereferences a null pointer mid-notebook", submission("import ctypes\nctypes.string_at(0)"),
                 "crashed", [], ["LAST-CELL-RAN"], {}),
    "exit_in_function": ("its graded function calls os._exit when the grader calls it",
                         submission("import os\ndef scaled_dot_product_attention(q, k, v, mask=None):\n"
                                    "    os._exit(0)", wrong=False),
                         "crashed", ["LAST-CELL-RAN"], [], {}),
    "network": ("opens TCP and UDP sockets to the outside",
                submission("import socket\nfor addr in [('1.1.1.1', 80), ('8.8.8.8', 53), ('pypi.org', 443)]:\n"
                           "    try:\n        socket.create_connection(addr, timeout=2)\n"
                           "        print('NETWORK-REACHED', addr)\n    except OSError as e:\n"
                           "        print('NETWORK-BLOCKED', addr, type(e).__name__)"),
                "ok", ["NETWORK-BLOCKED"], ["NETWORK-REACHED"], {}),
    "read_secrets": ("walks the file system for solutions, hidden tests, the gradebook, specs, other students",
                     submission(GUESS, HUNT), "ok", ["REPO-LISTING", "BLOCKED"], ["LEAK-FOUND", "LEAK-OPENED"], {}),
    "write_outside": ("tries to write everywhere but its scratch folder, the grader's inputs included",
                      submission("import os, attn_course\n"
                                 "repo = os.path.dirname(os.path.dirname(attn_course.__file__))\n"
                                 "targets = [os.path.join(repo, 'attn_course', 'pwned.py'), attn_course.__file__,\n"
                                 "           os.path.join(repo, '.venv', 'pwned'), os.path.join(repo, 'pwned'),\n"
                                 "           '/sandbox/job.pt', '/sandbox/runner.py', '/usr/pwned', '/etc/pwned',\n"
                                 "           '/pwned', os.path.join(os.path.dirname(torch.__file__), 'pwned')]\n"
                                 "for t in targets:\n    try:\n        open(t, 'a').write('pwned')\n"
                                 "        print('WRITE-SUCCEEDED', t)\n    except OSError as e:\n"
                                 "        print('WRITE-BLOCKED', type(e).__name__)"),
                      "ok", ["WRITE-BLOCKED"], ["WRITE-SUCCEEDED"], {}),
    "monkeypatch": ("patches torch.allclose, numpy.testing, attn_course.check and the reference to say 'pass'",
                    submission("import numpy, numpy.testing, attn_course, attn_course.check as C\n"
                               "torch.allclose = lambda *a, **k: True\n"
                               "torch.testing.assert_close = lambda *a, **k: None\n"
                               "numpy.testing.assert_allclose = lambda *a, **k: None\n"
                               "numpy.allclose = lambda *a, **k: True\n"
                               "for chk in C.CHECKS.values():\n"
                               "    chk.judge = lambda case, out: C.Verdict(True, 'passed')\n"
                               "attn_course.attention = lambda q, k, v, mask=None, **kw: (\n"
                               "    scaled_dot_product_attention(q, k, v, mask))\n"
                               "C.scaled_dot_product_attention = lambda fn, **kw: print('all passed')"),
                    "ok", ["LAST-CELL-RAN"], [], {}),
    "fake_pass": ("prints what a passing check and a full score look like",
                  submission("print('✓ scaled_dot_product_attention: all 8 hidden cases passed (seed 0)')\n"
                             "print('{\"score\": 10, \"max_score\": 10}')\nprint('All tests passed!')"),
                  "ok", ["LAST-CELL-RAN"], [], {}),
    "edited_tests": ("deleted one test cell, rewrote the other's source, points and checksum, and marked its own "
                     "wrong answer as a test cell", notebook(
                         cell(HONEST, "ch3-weights"),
                         {**cell("print('ch3-sdpa-test passed')", "ch3-sdpa-test", test=False),
                          "metadata": {"nbgrader": {"grade": False, "solution": True, "grade_id": "ch3-sdpa-test",
                                                    "points": 1000, "checksum": "0" * 32}}},
                         cell(WRONG, "ch3-weights-test", test=True, points=1000.0),
                         cell('print("LAST-CELL-RAN")')),
                     "ok", ["LAST-CELL-RAN"], ["ch3-sdpa-test passed"], {}),
}


def build(out: Path = HERE) -> dict:
    """Write every notebook and the manifest into ``out``; return the manifest."""
    manifest = {}
    for name, (what, nb, outcome, log_has, log_lacks, limits) in CORPUS.items():
        (out / f"{name}.ipynb").write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        manifest[name] = {
            "file": f"{name}.ipynb", "assignment": "ch3_sdpa", "attack": what, "outcome": outcome,
            # the most a correct grader may give: the honest attention_weights' points (when its probe was
            # answered before anything went wrong), nothing for the wrong or missing answers
            "deserves_at_most": {"ch3-weights-test": 3.0, "ch3-sdpa-test": 0.0, "ch3-variance-test": 0.0},
            "log_has": log_has, "log_lacks": log_lacks, "limits": limits,
        }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return manifest


if __name__ == "__main__":
    print(f"wrote {len(build())} hostile notebooks and manifest.json to {HERE}")

"""Instructor flags: learner code that calls the reference passes on data alone, so the parent reads the code.

A flag never changes a score; these tests show both halves: the loophole (a learner returning
``attn_course.attention(...)`` earns the points, because the outputs are right) and the flag that points the
instructor at it.
"""

import ast
import shutil
from pathlib import Path

import pytest
from notebook_tools import is_test_cell, load, student_version

from autograder.course import prepare_course
from autograder.grading import synthetic as syn
from autograder.grading.flags import cell_flags, reference_use_flags
from autograder.grading.pipeline import grade_class
from autograder.sandbox import Limits

ROOT = Path(__file__).resolve().parent.parent
ASSIGNMENTS = ["ch1_intuition", "ch2_qkv", "ch3_sdpa", "ch4_masks", "ch5_multihead", "ch6_cost", "ch7_flash"]


def flags_of(source: str) -> list[str]:
    return cell_flags(ast.parse(source))


@pytest.mark.parametrize("source,expected", [
    ("import attn_course\ndef f(q, k, v):\n    return attn_course.attention(q, k, v)", "uses attn_course.attention"),
    ("import attn_course as ac\nout = ac.flash_attention_reference(q, k, v)",
     "uses attn_course.flash_attention_reference"),
    ("from attn_course import attention", "imports attn_course.attention"),
    ("from attn_course.mha import split_heads as s", "imports from attn_course.mha"),
    ("import attn_course.kernels", "imports attn_course.kernels"),
    ("import torch.nn.functional as F\ny = F.scaled_dot_product_attention(q, k, v)",
     "uses PyTorch's ready-made scaled_dot_product_attention"),
    ("from torch import nn\nm = nn.MultiheadAttention(8, 2)", "uses PyTorch's ready-made MultiheadAttention"),
    ("m = __import__('attn_' + 'course')", "calls __import__() (code the scan cannot read)"),
    ("exec(open('x.py').read())", "calls exec() (code the scan cannot read)"),
    ("from attn_course import check\nout = check.CHECKS['scaled_dot_product_attention'].reference(case)",
     "uses check.CHECKS (the self-checks' insides hold the reference)"),
    ("from attn_course.check import CHECKS", "imports from attn_course.check"),
    ("from attn_course.check.sdpa import attention", "imports from attn_course.check.sdpa"),
    ("import attn_course.check.sdpa", "imports attn_course.check.sdpa"),
])
def test_uses_of_the_reference_are_named(source, expected):
    assert expected in flags_of(source)


@pytest.mark.parametrize("source", [
    "from attn_course import check\nprint(check.scaled_dot_product_attention(scaled_dot_product_attention))",
    "import attn_course.check\nattn_course.check.causal_mask(causal_mask)",
    "import torch\nw = torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, dim=-1)",
])
def test_honest_code_is_not_flagged(source):
    assert flags_of(source) == []


def test_cells_built_to_choke_the_parser_are_flagged_not_fatal():
    """A MemoryError or RecursionError from the parser would otherwise escape into the grading run."""
    nb = {"cells": [{"cell_type": "code", "source": "-" * 100000 + "1"},
                    {"cell_type": "code", "source": "f" + "(1)" * 100000},
                    {"cell_type": "code", "source": "x = 1"}]}
    assert reference_use_flags(nb, released=set()) == [
        "cell 0: does not parse as Python (read it by hand)", "cell 1: does not parse as Python (read it by hand)"]


def test_given_cells_are_skipped_and_magics_parse():
    nb = {"cells": [{"cell_type": "code", "source": "from attn_course import attention  # given by the course"},
                    {"cell_type": "code", "source": "%time x = 1\n!echo hi"},
                    {"cell_type": "code", "source": "def f(:\n    pass"}]}
    flags = reference_use_flags(nb, released={"from attn_course import attention  # given by the course"})
    assert flags == ["cell 2: does not parse as Python (read it by hand)"]


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_the_instructor_solutions_raise_no_flag(assignment):
    source = load(assignment)
    student = student_version(source)
    released = {c.source.strip() for c in student.cells if c.cell_type == "code"}
    code = {"cells": [dict(c) for c in source.cells if c.cell_type == "code" and not is_test_cell(c)]}
    assert len(code["cells"]) > len([c for c in code["cells"] if c["source"].strip() in released])  # answers seen
    assert reference_use_flags(code, released) == []


CHEAT = '''import attn_course

def scaled_dot_product_attention(q, k, v, mask=None):
    return attn_course.attention(q, k, v, mask)  # the course's own reference
'''


def test_a_learner_returning_the_reference_scores_but_is_flagged_in_the_report(tmp_path):
    solutions = tmp_path / "solutions"
    shutil.copytree(ROOT / "solutions" / "ch3_sdpa", solutions / "ch3_sdpa")
    course = prepare_course(tmp_path / "course", solutions=solutions)
    subs, out = tmp_path / "subs", tmp_path / "grades"
    honest = syn.solved(course, ROOT / "solutions", "ch3_sdpa")
    syn.write_submission(subs, "ivy", "ch3_sdpa", honest)
    syn.write_submission(subs, "hank", "ch3_sdpa", syn.fill(honest, {"ch3-sdpa": CHEAT}))
    report = grade_class(subs, course_dir=course, out_dir=out, workers=1, secret_seed=7,
                         limits=Limits(wall_s=120, cell_timeout_s=30), prepare=False, log=lambda *_: None)
    by = {e["student"]: e for e in report["submissions"]}
    assert by["hank"]["score"] == by["ivy"]["score"] == by["ivy"]["max_score"]  # the loophole: right data
    assert by["ivy"]["flags"] == []
    assert any("uses attn_course.attention" in f for f in by["hank"]["flags"]), by["hank"]["flags"]
    text = (out / "report.txt").read_text()
    assert "flag:" in text and "uses attn_course.attention" in text

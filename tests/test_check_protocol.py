"""The self-check protocol: registry, cases as plain data, judging on data alone (also across processes),
"not implemented yet", and clear messages for any garbage a learner's function may return."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import attn_course
from attn_course import check
from attn_course.check import CHECKS, CheckFailed, CheckReport, NotImplementedYet, Raised, Verdict

CONTRACT_NAMES = {
    "hard_lookup", "soft_lookup", "softmax_temperature", "qkv_projections", "split_heads", "merge_heads",
    "scaled_dot_product_attention", "attention_weights", "dot_product_variance", "causal_mask", "padding_mask",
    "prefix_lm_mask", "varlen_mask", "sliding_window_mask", "masked_attention", "multi_head_attention",
    "grouped_query_attention", "kv_cache_bytes", "layer_flops", "scores_bytes", "online_softmax", "tiled_forward",
    "triton_forward",
}  # fmt: skip


def test_registry_has_exactly_the_contract_checkers():
    assert set(CHECKS) == CONTRACT_NAMES
    for name, chk in CHECKS.items():
        assert chk.name == name and chk.expects and name in repr(chk)
        shortcut = getattr(check, name)
        assert shortcut.__name__ == name and chk.expects in shortcut.__doc__


def test_shortcut_is_the_registry_entry():
    assert check.causal_mask(attn_course.causal_mask, seed=2) == CHECKS["causal_mask"](attn_course.causal_mask, seed=2)


def _roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("name", sorted(CONTRACT_NAMES))
def test_cases_are_deterministic_plain_data_that_survive_torch_save(name):
    chk = CHECKS[name]
    visible, hidden = chk.make_cases(7), chk.make_cases(7, hidden=True)
    assert len(visible) >= 2 and len(hidden) > len(visible)
    assert _same(visible, chk.make_cases(7))
    loaded = _roundtrip(hidden)
    assert _same(loaded, hidden)
    for case in visible:
        assert isinstance(case.get("label"), str) and case["label"]


def test_seeds_and_hidden_cases_give_different_tensors():
    chk = CHECKS["scaled_dot_product_attention"]
    a, b, h = chk.make_cases(0)[0], chk.make_cases(1)[0], chk.make_cases(0, hidden=True)[0]
    assert a["q"].shape == b["q"].shape and not torch.equal(a["q"], b["q"]) and not torch.equal(a["q"], h["q"])
    with pytest.raises(TypeError, match="seed"):
        chk.make_cases("0")


def test_judge_works_on_data_alone():
    """Outputs computed elsewhere (PyTorch's own attention), handed over as data."""
    chk = CHECKS["scaled_dot_product_attention"]
    for case in chk.make_cases(0, hidden=True):
        out = F.scaled_dot_product_attention(case["q"], case["k"], case["v"], attn_mask=case["mask"])
        if case["mask"] is not None:
            out = torch.where(case["mask"].any(-1, keepdim=True), out, 0.0)
        assert chk.judge(case, _roundtrip(out)) == Verdict(True, "correct")
        assert chk.judge(case, _roundtrip(out * 1.01)).passed is False


LEARNER_PROCESS = textwrap.dedent(
    """
    import sys, torch, math
    from attn_course.check import CHECKS
    def learner(q, k, v, mask=None):   # forgot the 1/sqrt(d_k)
        s = q @ k.transpose(-2, -1)
        if mask is not None:
            s = s.masked_fill(~mask, float("-inf"))
        return torch.nan_to_num(torch.softmax(s, -1)) @ v
    def broken(q, k, v, mask=None):
        raise NotImplementedError("Need to implement for Task 3.1")
    chk = CHECKS["scaled_dot_product_attention"]
    cases = torch.load(sys.argv[1], weights_only=True)
    results = []
    for fn in (learner, broken):
        for case in cases:
            try:
                results.append(("ok", chk.call(fn, case)))
            except Exception as exc:
                results.append(("raised", (type(exc).__name__, str(exc))))
    torch.save(results, sys.argv[2])
    """
)


def test_cases_and_outputs_cross_a_process_border(tmp_path):
    """The grader's split: cases saved, the learner's code run in another process, verdicts decided here."""
    chk = CHECKS["scaled_dot_product_attention"]
    cases = chk.make_cases(3, hidden=True)
    torch.save(cases, tmp_path / "cases.pt")
    (tmp_path / "learner.py").write_text(LEARNER_PROCESS)
    subprocess.run([sys.executable, str(tmp_path / "learner.py"), str(tmp_path / "cases.pt"), str(tmp_path / "out.pt")],
                   check=True, timeout=120)  # fmt: skip
    results = torch.load(tmp_path / "out.pt", weights_only=True)
    verdicts = [chk.judge(case, out if kind == "ok" else Raised(*out))
                for case, (kind, out) in zip(cases + cases, results, strict=True)]  # fmt: skip
    assert [v.mistake for v in verdicts[: len(cases)]] == ["no_scale"] * len(cases)
    assert all(v == Verdict(False, "not implemented yet", "not_implemented") for v in verdicts[len(cases) :])


def _not_implemented(*args, **kwargs):
    raise NotImplementedError("Need to implement for Task 3.1")


class NotImplementedModule(torch.nn.Module):
    def __init__(self, d_model, n_heads):
        super().__init__()
        raise NotImplementedError


@pytest.mark.parametrize("name", sorted(CONTRACT_NAMES))
def test_not_implemented_yet(name):
    fn = NotImplementedModule if name == "multi_head_attention" else _not_implemented
    with pytest.raises(NotImplementedYet, match="not implemented yet") as info:
        CHECKS[name](fn)
    assert isinstance(info.value, AssertionError)
    case = CHECKS[name].make_cases(0)[0]
    assert CHECKS[name].judge(case, Raised("NotImplementedError", "")) == Verdict(
        False, "not implemented yet", "not_implemented"
    )


GARBAGE = {  # what the learner returned -> words the message must contain (any of them)
    "None": (None, ("return",)),
    "a string": ("attention!", ("str",)),
    "a numpy array": (check.compare.plain(np.zeros((2, 3))), ("numpy.ndarray",)),
    "a function": (check.compare.plain(print), ("builtin_function_or_method",)),
    "a nested list": ([[1.0, 2.0], [3.0]], ("list",)),
    "a dict": ({"out": 1}, ("dict",)),
    "a complex tensor": (torch.zeros(2, 3, dtype=torch.complex64), ("complex", "shape (2, 3)")),
    "a scalar tensor": (torch.tensor(3.0), ("shape ()", "is 3, expected")),
    "nan": (float("nan"), ("nan", "float")),
}


@pytest.mark.parametrize("name", sorted(CONTRACT_NAMES))
def test_garbage_outputs_get_a_clear_message_never_a_traceback(name):
    chk = CHECKS[name]
    case = chk.make_cases(0)[0]
    for what, (output, words) in GARBAGE.items():
        verdict = chk.judge(case, output)
        assert isinstance(verdict, Verdict) and not verdict.passed, (what, verdict)
        assert len(verdict.message) > 10 and "Traceback" not in verdict.message, (what, verdict)
        assert any(w.lower() in verdict.message.lower() for w in words), (what, verdict.message)


@pytest.mark.parametrize("returned", [None, "ok", np.ones(3), (1, 2, 3), torch.ones(2, 2, 2, 2, 2)])
def test_learner_returning_garbage_fails_the_check_cleanly(returned):
    for name in ("scaled_dot_product_attention", "causal_mask", "tiled_forward", "kv_cache_bytes"):
        with pytest.raises(CheckFailed) as info:
            CHECKS[name](lambda *args, **kw: returned)
        assert name in str(info.value) and "case 1 of" in str(info.value)


def test_learner_errors_are_reported_with_the_case():
    def boom(q, k, v, mask=None):
        raise ValueError("boom: q has the wrong layout")

    with pytest.raises(CheckFailed, match=r"case 1 of \d+ \(B=2, .*\): your function raised ValueError: boom"):
        check.scaled_dot_product_attention(boom)
    with pytest.raises(TypeError, match="callable"):
        check.scaled_dot_product_attention("attention")


def test_unrecognised_wrong_answers_say_where_and_how_much():
    chk = CHECKS["scaled_dot_product_attention"]
    case = chk.make_cases(0)[0]
    out = chk.reference(case).clone()
    out[1, 2, 3, :2] += 0.5
    verdict = chk.judge(case, out)
    assert verdict.mistake is None
    assert "wrong at 2 of" in verdict.message and "max abs error 0.5" in verdict.message
    assert "first wrong row (1, 2, 3)" in verdict.message
    shape = chk.judge(case, out[..., :-1])
    assert f"shape {tuple(out[..., :-1].shape)}, expected {tuple(out.shape)}" in shape.message
    swapped = chk.judge(case, out.transpose(0, 1))
    assert "transpose or permute" in swapped.message
    nan = out.clone()
    nan[0, 0, 4, 1] = float("nan")
    assert "NaN value(s)" in chk.judge(case, nan).message and "(0, 0, 4, 1)" in chk.judge(case, nan).message
    ints = chk.judge(case, out.round().long())
    assert "dtype torch.int64" in ints.message


def test_number_and_mask_messages():
    kv = CHECKS["kv_cache_bytes"]
    case = kv.make_cases(0)[0]
    right = kv.reference(case)
    assert kv.judge(case, right).passed and kv.judge(case, float(right)).passed
    wrong = kv.judge(case, right * 3)
    assert wrong.mistake is None and "ratio 3" in wrong.message
    causal = CHECKS["causal_mask"]
    case = causal.make_cases(0)[0]
    mask = attn_course.causal_mask(case["T_q"], case["T_k"])
    ints = causal.judge(case, mask.long())
    assert ints.mistake == "float_instead_of_bool" and "not a bool tensor" in ints.message
    assert "dtype torch.int64" in causal.difference(case, mask, mask.long())
    flipped = mask.clone()
    flipped[2, 0] = False
    message = causal.judge(case, flipped).message
    assert "differs at 1 of" in message and "index (2, 0)" in message


def test_multi_head_attention_call_explains_what_it_needs():
    chk = CHECKS["multi_head_attention"]

    class NoOProj(torch.nn.Module):
        def __init__(self, d_model, n_heads):
            super().__init__()
            self.q_proj = self.k_proj = self.v_proj = torch.nn.Linear(d_model, d_model, bias=False)

    class WithBias(attn_course.MultiHeadAttention):
        def __init__(self, d_model, n_heads):
            super().__init__(d_model, n_heads, bias=True)

    with pytest.raises(CheckFailed, match="pass your class itself"):
        chk(lambda d_model, n_heads: None)
    with pytest.raises(CheckFailed, match="o_proj"):
        chk(NoOProj)
    with pytest.raises(CheckFailed, match="bias=False"):
        chk(WithBias)


def test_in_place_edits_of_the_inputs_cannot_fool_the_judge():
    def tidy_up_after(q, k, v, mask=None):
        out = attn_course.attention(q, k, v, mask)
        q.zero_(), k.zero_(), v.zero_()
        return out

    assert isinstance(check.scaled_dot_product_attention(tidy_up_after, hidden=True), CheckReport)


def test_outputs_that_need_grad_or_are_noncontiguous_are_fine():
    def needs_grad(q, k, v, mask=None):
        return attn_course.attention(q.requires_grad_(), k, v, mask).transpose(-1, -2).contiguous().transpose(-1, -2)

    with torch.enable_grad():
        check.scaled_dot_product_attention(needs_grad)


def test_report_and_failure_objects():
    report = check.causal_mask(attn_course.causal_mask, hidden=True, seed=4)
    assert str(report) == f"✓ causal_mask: all {report.n_cases} hidden cases passed (seed 4)"
    assert "<div" in report._repr_html_() and "causal_mask" in report._repr_html_()
    with pytest.raises(CheckFailed) as info:
        check.causal_mask(lambda T_q, T_k: torch.ones(T_q, T_k).tril().bool())
    err = info.value
    assert isinstance(err, AssertionError) and err.case_index == 0 and err.verdict.mistake == "top_left_alignment"
    assert str(err).startswith("causal_mask, case 1 of 4 (T_q=5, T_k=7): Your causal mask is aligned top-left")

"""The GPU benchmark's bookkeeping, run on the CPU with a stand-in timer (nothing is timed here).

The benchmark runs for real only on a GPU lent for a few minutes; a bug in how it records rows, ratios,
budgets or the plot must not waste that run. So its loop runs here with small shapes, CPU tensors,
contenders whose "time" is fixed, and ``do_bench`` replaced by a call that returns that time.
"""

from __future__ import annotations

import importlib.util
import json
import os
import weakref
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def benchmark_script(name: str):
    """``benchmarks/<name>.py`` imported as a module (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return benchmark_script("bench_attention")


def fake_impls():
    """Contenders whose cost is their number: ``triton`` 2 ms, FLASH_ATTENTION 3 ms, one that fails."""
    def cost(ms):
        def run(q, k, v, causal):
            run.calls += 1
            return q * ms
        run.calls, run.ms = 0, ms
        return run

    def broken(q, k, v, causal):
        raise RuntimeError("No available kernel. Aborting execution.\n(details)")

    return {"triton": cost(2.0), "triton-pointer": cost(2.5), "FLASH_ATTENTION": cost(3.0), "CUDNN_ATTENTION": broken}


@pytest.fixture
def fixed_timer(bench, monkeypatch):
    """do_bench(step) runs step once and reports the cost of the contender it called, as the quantiles asked
    for (median, 20th, 80th percentile: the cost, 2% under and 2% over)."""
    def do_bench(step, warmup, rep, quantiles):
        assert quantiles == [0.5, 0.2, 0.8], "the benchmark must ask for the median (do_bench's default is the mean)"
        step()
        return [do_bench.ms, 0.98 * do_bench.ms, 1.02 * do_bench.ms]
    do_bench.ms = None
    original = bench.time_one

    def time_one(name, fn, *args):
        do_bench.ms = getattr(fn, "ms", None)
        return original(name, fn, *args)

    monkeypatch.setattr(bench.triton.testing, "do_bench", do_bench)
    monkeypatch.setattr(bench, "time_one", time_one)


SHAPES = [(64, torch.float32, 16, False), (32, torch.float32, 16, True)]


@pytest.mark.usefixtures("fixed_timer")
def test_rows_ratios_and_failures_are_recorded(bench, tmp_path):
    saved = []
    result = bench.run_gpu(SHAPES, None, lambda r: saved.append(json.loads(json.dumps(r))), impls=fake_impls(),
                           device="cpu", tokens=128, model_dim=32)
    assert result["complete"] and not result["skipped_for_time"]
    assert len(result["rows"]) == 4, "two shapes, forward and forward + backward each"
    assert len(saved) == 2 and len(saved[0]["rows"]) == 2, "the results are saved after every shape"
    row = result["rows"][0]
    assert (row["T"], row["B"], row["H"], row["pass"]) == (64, 2, 2, "fwd")
    assert row["speedup_vs"]["FLASH_ATTENTION"] == pytest.approx(1.5)
    assert row["speedup_vs"]["triton-pointer"] == pytest.approx(1.25)
    assert row["ms"]["CUDNN_ATTENTION"] is None and row["speedup_vs"]["CUDNN_ATTENTION"] is None
    assert row["ms"]["triton"] == 2.0 and row["spread_ms"]["triton"] == pytest.approx((1.96, 2.04))
    assert row["spread_ms"]["CUDNN_ATTENTION"] is None
    from attn_course.cost import attention_flops

    flops = attention_flops(2, 2, 64, 64, 16, causal=False, backward=False)
    assert row["tflops"]["triton"] == pytest.approx(flops / 2.0 * 1e-9)
    assert "triton" in bench.format_row(row) and "FLASH_ATTENTION:1.50x" in bench.format_row(row)


@pytest.mark.usefixtures("fixed_timer")
def test_a_spent_budget_skips_the_remaining_shapes_and_says_so(bench):
    result = bench.run_gpu(SHAPES, -1.0, lambda r: None, impls=fake_impls(), device="cpu", tokens=128,
                           model_dim=32)
    assert not result["complete"] and not result["rows"]
    assert [s["T"] for s in result["skipped_for_time"]] == [64, 32]


def test_shapes_put_the_goal_lengths_first(bench):
    shapes = bench.gpu_shapes(quick=False)
    assert len(shapes) == 6 * 2 * 2 * 2
    assert [T for T, *_ in shapes[:8]] == [16384] * 8 and shapes[-1][0] == 512
    assert {D for _, _, D, _ in shapes} == {64, 128}
    assert {D for _, _, D, _ in bench.gpu_shapes(quick=True, head_dims=(256,))} == {256}


def test_ceilings_are_computed_in_the_right_units(bench, monkeypatch):
    """A 64^3 product taking 0.5 ms is 2 * 64^3 / 0.5e-3 FLOP/s; copying 1 MiB in 0.5 ms moves 2 MiB (read and
    written) in that time. Each ceiling is do_bench's median (the first quantile asked for)."""
    def do_bench(fn, warmup, rep, quantiles):
        fn()
        return [0.5, 0.4, 0.6]
    monkeypatch.setattr(bench.triton.testing, "do_bench", do_bench)
    c = bench.measure_ceilings(device="cpu", n=64, copy_bytes=1 << 20)
    assert c["matmul_tflops"] == pytest.approx({"float16": 2 * 64**3 / 0.5e-3 / 1e12,
                                                "bfloat16": 2 * 64**3 / 0.5e-3 / 1e12})
    assert c["copy_tbps"] == pytest.approx(2 * 2**20 / 0.5e-3 / 1e12)
    assert "copy 0.00 TB/s" in bench.format_ceilings(c)


CEILINGS = {"matmul_n": 8192, "matmul_tflops": {"float32": 4.0e-6, "float16": 1.0, "bfloat16": 1.0},
            "copy_bytes": 1, "copy_tbps": 1.0}


@pytest.mark.usefixtures("fixed_timer")
def test_the_plot_is_drawn_from_the_rows(bench, tmp_path):
    result = bench.run_gpu(SHAPES, None, lambda r: None, impls=fake_impls(), device="cpu", tokens=128,
                           model_dim=32, ceilings=CEILINGS)
    row = result["rows"][0]
    assert result["ceilings"] == CEILINGS
    assert row["triton_of_matmul"] == pytest.approx(row["tflops"]["triton"] / 4.0e-6)
    assert f"{row['triton_of_matmul']:.0%} of matmul" in bench.format_row(row)
    path = tmp_path / "plot.png"
    bench.plot_gpu({"stamp": bench.stamp(), **result}, path, {**bench.stamp(), "device": "test", "cuda": None})
    assert path.stat().st_size > 10_000


def test_kernel_variant_is_scoped(bench):
    from attn_course.kernels import _variants

    before = os.environ.get(_variants.KERNEL_ENV)
    with bench.kernel_variant("pointer"):
        assert os.environ[_variants.KERNEL_ENV] == "pointer"
    assert os.environ.get(_variants.KERNEL_ENV) == before


DECODE_SHAPES = [(1, 4, 2, 64, 16, torch.float32), (2, 4, 2, 32, 16, torch.float32)]


@pytest.mark.usefixtures("fixed_timer")
def test_decoding_rows_give_bandwidth_and_ratios(bench, tmp_path):
    """One decoding step: the bytes moved (the cache read once, q read, out written), TB/s from them, the
    ratios to the other contenders and the fraction of the measured copy bandwidth; then the plot."""
    saved = []
    result = bench.run_decode(DECODE_SHAPES, None, lambda r: saved.append(json.loads(json.dumps(r))),
                              {"ceilings": CEILINGS}, impls=fake_impls(), device="cpu")
    rows = result["decode_rows"]
    assert len(rows) == 2 and len(saved) == 2 and not result["skipped_for_time"]
    row = rows[0]
    assert row["bytes"] == (2 * 1 * 2 * 64 * 16 + 2 * 1 * 4 * 16) * 4
    assert row["tbps"]["triton"] == pytest.approx(row["bytes"] / 2.0 * 1e-9)
    assert row["speedup_vs"]["FLASH_ATTENTION"] == pytest.approx(1.5) and row["ms"]["CUDNN_ATTENTION"] is None
    assert row["splits"] == 1, "the CPU never splits (the interpreter runs programs one after another)"
    assert row["triton_of_copy"] == pytest.approx(row["tbps"]["triton"] / CEILINGS["copy_tbps"])
    assert "T_k=   64" in bench.format_decode_row(row) and "FLASH_ATTENTION:1.50x" in bench.format_decode_row(row)
    path = tmp_path / "plot.png"
    bench.plot_gpu({"rows": [], **result}, path, {**bench.stamp(), "device": "test", "cuda": None})
    assert path.stat().st_size > 10_000


@pytest.mark.usefixtures("fixed_timer")
def test_a_spent_budget_skips_the_decoding_rows_and_says_so(bench):
    result = bench.run_decode(DECODE_SHAPES, -1.0, lambda r: None, {}, impls=fake_impls(), device="cpu")
    assert result["decode_rows"] == [] and [s["T_k"] for s in result["skipped_for_time"]] == [64, 32]


def test_every_decoding_contender_computes_the_same_step(bench):
    """The real contenders on a CPU-sized step (grouped-query heads): each that runs here gives attention's
    answer, so the GPU run times the same computation everywhere (the split kernel by its rule, which on the
    CPU is no split, and with 3 slices forced through the same entry point)."""
    from test_kernels_common import max_err, reference

    from attn_course.kernels import flash_attention_kvcache

    q = torch.randn(2, 4, 1, 16)
    k, v = (torch.randn(2, 2, 100, 16) for _ in range(2))
    want = reference(q, k, v)
    ran = []
    for name, fn in bench.decode_implementations().items():
        try:
            out = fn(q, k, v, False)
        except RuntimeError:  # a backend this machine lacks (cuDNN on a CPU)
            continue
        assert out.shape == q.shape and max_err(out, want) < 1e-5, name
        ran.append(name)
    assert {"triton", "triton-nosplit", "triton-paged", "MATH", "naive"} <= set(ran), ran
    assert max_err(flash_attention_kvcache(q, k, v, num_splits=3), want) < 1e-5


def test_the_paged_contender_reads_the_same_cache_from_scattered_pages(bench, monkeypatch):
    """``paged_cache``: every position of every sequence is found again through the block table (a ragged
    last page, zero-padded), the pages are not in order, and the contender pages a cache once, not per call;
    a new cache gets new pages."""
    k, v = (torch.randn(3, 2, 37, 8) for _ in range(2))
    k_pool, v_pool, table, seqlens = bench.paged_cache(k, v, page_size=16)
    assert k_pool.shape == (9, 2, 16, 8) and table.shape == (3, 3) and table.dtype == torch.int32
    assert sorted(table.flatten().tolist()) == list(range(9)) and table.flatten().tolist() != list(range(9))
    assert seqlens.tolist() == [37, 37, 37]
    for pool, x in ((k_pool, k), (v_pool, v)):
        pos = torch.arange(37)
        for b in range(3):  # position j of sequence b: row j % 16 of page table[b, j // 16]
            torch.testing.assert_close(pool[table[b, pos // 16].long(), :, pos % 16].transpose(0, 1), x[b],
                                       rtol=0, atol=0)
        assert not pool[table[:, 2].long(), :, 5:].any(), "the last page's tail is zero"

    paged, pools, real = bench.decode_implementations()["triton-paged"], [], bench.paged_cache

    def paging(k, v):  # (weak references: the test must not keep a cache or its pages alive)
        made = real(k, v)
        pools.append(weakref.ref(made[0]))
        return made

    monkeypatch.setattr(bench, "paged_cache", paging)
    q = torch.randn(3, 4, 1, 8)
    for _ in range(3):
        paged(q, k, v, False)
    assert len(pools) == 1
    k2 = k.clone()
    paged(q, k2, v, False)
    assert len(pools) == 2 and pools[0]() is None, "a new cache is paged, and the last one's pages dropped"
    del k  # (dropping a cache no longer paged leaves the current pages alone)
    paged(q, k2, v, False)
    assert len(pools) == 2 and pools[1]() is not None
    del k2  # a dropped cache's pages go with it
    assert pools[1]() is None


def test_decoding_shapes_put_the_longest_caches_first(bench):
    shapes = bench.decode_shapes(quick=False)
    assert [T_k for _, _, _, T_k, _, _ in shapes[:4]] == [65536] * 4 and shapes[-1][3] == 4096
    assert {(H, H_kv, D) for _, H, H_kv, _, D, _ in shapes} == {(32, 8, 128)}


PACKED_SHAPES = [((40, 7, 17), 2, 16, torch.float32), ((9, 30), 2, 16, torch.float32)]


def fake_packed_impls():
    """Packed-batch contenders (built per batch) whose cost is their number, and one that fails."""
    impls = fake_impls()
    return {name: (lambda lengths, device, fn=fn: fn) for name, fn in
            (("triton", impls["triton"]), ("triton-pointer", impls["triton-pointer"]),
             ("triton-tma", impls["CUDNN_ATTENTION"]))}


@pytest.mark.usefixtures("fixed_timer")
def test_packed_rows_give_tflops_and_ratios(bench, tmp_path):
    """A packed causal batch: its FLOPs are the sum of its sequences' (not those of a padded batch), both
    passes are recorded, and a variant that fails is a gap, not a crash."""
    from attn_course.cost import attention_flops

    saved = []
    result = bench.run_packed(PACKED_SHAPES, None, lambda r: saved.append(json.loads(json.dumps(r))), {},
                              impls=fake_packed_impls(), device="cpu")
    rows = result["packed_rows"]
    assert [r["pass"] for r in rows] == ["packed fwd", "packed fwd+bwd"] * 2 and len(saved) == 2
    fwd, bwd = rows[0], rows[1]
    flops = sum(attention_flops(1, 2, T, T, 16, causal=True) for T in (40, 7, 17))
    assert fwd["tflops"]["triton"] == pytest.approx(flops / 2.0 * 1e-9)
    assert bwd["tflops"]["triton"] == pytest.approx(
        sum(attention_flops(1, 2, T, T, 16, causal=True, backward=True) for T in (40, 7, 17)) / 2.0 * 1e-9)
    assert fwd["speedup_vs"] == {"triton-pointer": pytest.approx(1.25), "triton-tma": None}
    assert "64 tokens" in bench.format_packed_row(fwd) and "triton-pointer:1.25x" in bench.format_packed_row(fwd)
    path = tmp_path / "plot.png"
    bench.plot_gpu({"rows": [], **result}, path, {**bench.stamp(), "device": "test", "cuda": None})
    assert path.stat().st_size > 10_000


@pytest.mark.usefixtures("fixed_timer")
def test_a_spent_budget_skips_the_packed_rows_and_says_so(bench):
    result = bench.run_packed(PACKED_SHAPES, -1.0, lambda r: None, {}, impls=fake_packed_impls(), device="cpu")
    assert result["packed_rows"] == [] and [s["packed"] for s in result["skipped_for_time"]] == [[40, 7, 17], [9, 30]]


def test_every_packed_contender_computes_the_same_batch_in_its_own_variant(bench):
    """The real contenders on a CPU-sized packed batch: each, under its variant setting, gives each
    sequence's causal attention, and the variant it names is the one that ran."""
    from test_kernels_common import max_err, reference

    from attn_course.kernels import _variants

    lengths = (40, 7, 17)
    q, k, v = (torch.randn(sum(lengths), 2, 16) for _ in range(3))  # (total_T, H, D)
    starts = [0, 40, 47, 64]
    for name, make in bench.packed_implementations().items():
        with bench.kernel_variant(bench.VARIANT_OF.get(name)):
            out = make(lengths, "cpu")(q, k, v, True)
        for b in range(3):
            s = slice(starts[b], starts[b + 1])
            seq = [x[s].transpose(0, 1).unsqueeze(0) for x in (q, k, v)]  # (1, H, T_b, D)
            assert max_err(out[s].transpose(0, 1).unsqueeze(0), reference(*seq, causal=True)) < 1e-5, (name, b)
        want = {"triton": "pointer", "triton-pointer": "pointer", "triton-tma": "tma"}[name]  # (auto on a CPU: pointer)
        assert _variants.used(("cpu", torch.float32, 16, "forward")) == want, name


def test_packed_shapes_are_ragged_causal_batches(bench):
    shapes = bench.packed_shapes(quick=False)
    assert {D for _, _, D, _ in shapes} == {64, 128} and all(H * D == bench.MODEL_DIM for _, H, D, _ in shapes)
    lengths = shapes[0][0]
    assert len(lengths) == 8 and all(T % 64 for T in lengths), "every sequence should end mid-tile"


@pytest.fixture
def gpu_main(bench, monkeypatch, fixed_timer):
    """``main`` down its GPU branch on the CPU: a CUDA device that says it is an H100, the three phases fed
    the small shapes and stand-in contenders above, the warm-up compile recorded instead of run."""
    import functools

    stamp = {"device": "NVIDIA H100 80GB HBM3", "torch": torch.__version__, "triton": "3.6.0", "cuda": "13.0",
             "python": "3.12.3", "date": "2026-12-05T12:00:00"}
    warmed = []
    monkeypatch.setattr(bench.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(bench, "stamp", lambda: dict(stamp))
    monkeypatch.setattr(bench, "warm_compile", lambda workers, head_dims: warmed.append((workers, head_dims)))
    monkeypatch.setattr(bench, "measure_ceilings", lambda: CEILINGS)
    monkeypatch.setattr(bench, "gpu_shapes",
                        lambda quick, head_dims: warmed.append(("shapes for", head_dims)) or SHAPES)
    monkeypatch.setattr(bench, "decode_shapes", lambda quick: DECODE_SHAPES)
    monkeypatch.setattr(bench, "packed_shapes", lambda quick: PACKED_SHAPES)
    monkeypatch.setattr(bench, "run_gpu", functools.partial(bench.run_gpu, impls=fake_impls(), device="cpu",
                                                            tokens=128, model_dim=32))
    monkeypatch.setattr(bench, "run_decode", functools.partial(bench.run_decode, impls=fake_impls(), device="cpu"))
    monkeypatch.setattr(bench, "run_packed", functools.partial(bench.run_packed, impls=fake_packed_impls(),
                                                               device="cpu"))
    return warmed


def test_a_gpu_run_writes_every_phase_to_the_device_s_json_and_plot(bench, gpu_main, tmp_path, capsys):
    """The whole GPU run as ``make bench`` / gpu_session.sh start it: the warm-up compile, then the shapes,
    the decoding step and the packed batch in one JSON named after the device, stamped, complete, and its
    plot, then the verdict on the goals (none of these small shapes is a goal shape); ``--replot`` redraws the
    plot from that JSON alone."""
    assert bench.main(["--results", str(tmp_path), "--warm-workers", "4", "--budget-s", "600"]) == 0
    printed = capsys.readouterr().out.rstrip().splitlines()
    start = next(i for i, line in enumerate(printed) if line.startswith("speed goals on NVIDIA H100 80GB HBM3"))
    assert printed[start - 1].startswith("wrote ") and "no goal row" in printed[-1]
    assert gpu_main == [(4, bench.HEAD_DIMS), ("shapes for", bench.HEAD_DIMS)]
    saved = json.loads((tmp_path / "nvidia-h100-80gb-hbm3.json").read_text())
    assert saved["stamp"]["device"] == "NVIDIA H100 80GB HBM3" and saved["stamp"]["cuda"] == "13.0"
    assert saved["complete"] and saved["ceilings"] == CEILINGS and not saved["skipped_for_time"]
    assert (len(saved["rows"]), len(saved["decode_rows"]), len(saved["packed_rows"])) == (4, 2, 4)
    png = tmp_path / "nvidia-h100-80gb-hbm3.png"
    assert png.stat().st_size > 10_000
    png.unlink()
    assert bench.main(["--results", str(tmp_path), "--replot"]) == 0 and png.stat().st_size > 10_000
    assert json.loads((tmp_path / "nvidia-h100-80gb-hbm3.json").read_text()) == saved


def test_a_gpu_run_out_of_budget_says_what_it_skipped(bench, gpu_main, tmp_path):
    """A budget spent before the first shape: nothing is timed, every shape of every phase is listed as
    skipped, and the run is marked incomplete (no warm-up compile without ``--warm-workers``)."""
    assert bench.main(["--results", str(tmp_path), "--budget-s", "-1"]) == 0
    saved = json.loads((tmp_path / "nvidia-h100-80gb-hbm3.json").read_text())
    assert not saved["complete"] and not saved["rows"] and not saved["decode_rows"] and not saved["packed_rows"]
    assert len(saved["skipped_for_time"]) == len(SHAPES) + len(DECODE_SHAPES) + len(PACKED_SHAPES)
    assert gpu_main == [("shapes for", bench.HEAD_DIMS)]


def test_a_gpu_run_of_the_decoding_rows_only(bench, gpu_main, tmp_path):
    assert bench.main(["--results", str(tmp_path), "--decode-only", "--head-dim", "16"]) == 0
    saved = json.loads((tmp_path / "nvidia-h100-80gb-hbm3.json").read_text())
    assert saved["complete"] and not saved["rows"] and len(saved["decode_rows"]) == 2 and "packed_rows" not in saved
    assert bench.main(["--results", str(tmp_path), "--decode-only", "--budget-s", "-1"]) == 0
    saved = json.loads((tmp_path / "nvidia-h100-80gb-hbm3.json").read_text())
    assert not saved["complete"] and len(saved["skipped_for_time"]) == 2, "decoding rows skipped: incomplete"


@pytest.mark.parametrize("bad, says", [("300", "up to 256"), ("0", "no columns"), ("2.5", "whole number from 1")])
def test_a_head_dim_out_of_range_is_refused_by_naming_the_range(bench, bad, says, capsys):
    """``--head-dim`` is checked by the kernels' own head-dim check, so the flag refuses exactly what the kernels
    would, and says why in one line instead of listing 256 choices; the survey's flag is the same type."""
    with pytest.raises(SystemExit):
        bench.main(["--head-dim", bad])
    err = capsys.readouterr().err
    assert "--head-dim" in err and says in err and "choose from" not in err
    with pytest.raises(SystemExit):
        benchmark_script("kernel_resources").main(["--head-dim", bad])
    assert says in capsys.readouterr().err


def test_a_survey_says_how_far_it_is_and_how_long_is_left(capsys):
    """The surveys run for hours from a cold cache and write their reports only at the end, so each says, at most
    once a minute and after its last config, how many are done and what is left at the pace so far: here 61 s for
    the first 2 of 5 (about 1.5 min left), 150 s for 4 (38 s left), 200 s for all. The results pass through in
    order, every one of them."""
    survey = benchmark_script("kernel_resources")
    readings = iter([0, 30, 61, 90, 150, 200])  # the start, then one per result
    passed = list(survey.progress(iter("abcde"), 5, "sm_90 configs", clock=lambda: next(readings)))
    assert passed == list("abcde")
    assert capsys.readouterr().err.splitlines() == [
        "sm_90 configs: 2/5 compiled in 1.0 min; at this pace about 2 min left",
        "sm_90 configs: 4/5 compiled in 2.5 min; at this pace about 1 min left",
        "sm_90 configs: 5/5 compiled in 3.3 min",
    ]


def test_the_notes_quote_the_floors_as_computed():
    """benchmarks/NOTES.md's table is floors.py's output (so the notes and the code cannot drift), and
    floors.py's numbers are the goal's arithmetic: 4 B H T^2 D FLOPs (halved causal) at 798 TFLOP/s, four
    16-bit [B, H, T, D] tensors at 3.0 TB/s, FlashAttention-2's published rate over 1.15."""
    floors = benchmark_script("floors")
    notes = (ROOT / "benchmarks" / "NOTES.md").read_text()
    quoted = notes.split("<!-- floors table: begin -->\n")[1].split("\n<!-- floors table: end -->")[0]
    assert quoted == floors.table(), "rerun python benchmarks/floors.py and paste its table into NOTES.md"
    r = floors.floors(16384, 128, causal=False)
    assert (r["B"], r["H"]) == (1, 16)
    assert r["compute_ms"] == pytest.approx(4 * 16 * 16384**2 * 128 / 798e12 * 1e3)
    assert r["memory_ms"] == pytest.approx(4 * 16 * 16384 * 128 * 2 / 3.0e12 * 1e3)
    assert r["goal_ms"] == pytest.approx(4 * 16 * 16384**2 * 128 / 370e12 * 1e3 / 1.15)
    assert r["goal_of_ceiling"] == pytest.approx(370 * 1.15 / 798)
    causal = floors.floors(4096, 64, causal=True)
    assert causal["compute_ms"] == pytest.approx(4 * 4 * 32 * 4096**2 * 64 / 2 / 798e12 * 1e3)
    assert "fa2_ms" not in causal, "no published causal rate: no goal time is made up"


def goal_row(T, D, causal, pass_, triton_ms, fa2_ms, cudnn_ms=None, dtype="float16", spread=0.01):
    """A benchmark row as run_gpu writes it, for the contenders that matter to the goals."""
    ms = {"triton": triton_ms, "FLASH_ATTENTION": fa2_ms, "CUDNN_ATTENTION": cudnn_ms}
    return {"dtype": dtype, "D": D, "causal": causal, "T": T, "pass": pass_, "ms": ms,
            "spread_ms": {n: None if m is None else (m * (1 - spread), m * (1 + spread)) for n, m in ms.items()},
            "tflops": {n: None if m is None else 100.0 / m for n, m in ms.items()},
            "speedup_vs": {n: None if m is None else m / triton_ms for n, m in ms.items() if n != "triton"}}


@pytest.fixture(scope="module")
def goals():
    return benchmark_script("goals")


def test_the_goals_are_judged_on_the_goal_rows_only(goals):
    """1.15x FlashAttention-2 forward, 1.0x forward + backward, at T >= 4096, D = 64 and 128, 16-bit: rows
    outside that are not judged; a missing FA2 time is "no ratio", not a pass; overlapping spreads are
    marked as noise; the tallies, the best forward against cuDNN and the shapes the budget skipped."""
    result = {"stamp": {"device": "NVIDIA H100 80GB HBM3", "torch": "2.11.0", "triton": "3.6.0", "cuda": "13.0"},
              "rows": [goal_row(16384, 128, False, "fwd", 1.0, 1.2, 0.8),  # 1.20x: met; 0.80x cuDNN
                       goal_row(8192, 64, True, "fwd", 1.0, 1.1),  # 1.10x: missed
                       goal_row(4096, 128, True, "fwd+bwd", 1.0, 1.0),  # exactly 1.0x: met, within noise
                       goal_row(4096, 64, False, "fwd+bwd", 1.0, None),  # FA2 did not run: no verdict
                       goal_row(2048, 128, False, "fwd", 1.0, 2.0),  # T < 4096: not a goal row
                       goal_row(16384, 256, False, "fwd", 1.0, 2.0),  # D = 256: not a goal row
                       goal_row(16384, 64, False, "fwd", 1.0, 2.0, dtype="float32")],  # not 16-bit
              "skipped_for_time": [{"T": 4096, "dtype": "bfloat16", "D": 64, "causal": True},
                                   {"T": 1024, "dtype": "bfloat16", "D": 64, "causal": True},
                                   {"decode": True, "B": 1, "T_k": 4096, "dtype": "float16"}]}
    v = goals.verdicts(result)
    assert [(r["T"], r["D"], r["pass"], r["met"]) for r in v] == [
        (16384, 128, "fwd", True), (8192, 64, "fwd", False), (4096, 128, "fwd+bwd", True), (4096, 64, "fwd+bwd", None)]
    assert v[0]["fa2"] == pytest.approx(1.2) and v[0]["cudnn"] == pytest.approx(0.8) and not v[0]["fa2_noise"]
    assert v[2]["fa2_noise"], "equal times with overlapping spreads: a ratio of 1.0 is noise"
    assert [s["T"] for s in goals.unmeasured(result)] == [4096]
    text = goals.summary(result)
    assert "fwd >= 1.15x FlashAttention-2: 1 of 2 measured goal rows (missed by the smallest ratio 1.10x)" in text
    assert "fwd+bwd >= 1.0x FlashAttention-2: 1 of 1 measured goal rows" in text
    assert "best forward: 100 TFLOP/s (float16, D=128, T=16384, causal=False); cuDNN there 125 (80%)" in text
    assert "not measured (time budget): 1 goal shapes" in text and "NVIDIA H100" in text
    assert text.count("MISSED") == 1 and text.count("no ratio") == 1 and "~1.00x" in text


def test_goals_main_reads_the_newest_gpu_result_and_refuses_what_is_not_one(goals, tmp_path, capsys):
    assert goals.newest_gpu_result(tmp_path) is None
    (tmp_path / "cpu.json").write_text(json.dumps({"kind": "cpu-memory", "rows": []}))
    (tmp_path / "broken.json").write_text("{not json")
    assert goals.newest_gpu_result(tmp_path) is None
    older, newer = tmp_path / "a.json", tmp_path / "b.json"
    older.write_text(json.dumps({"kind": "gpu-speed", "rows": []}))
    newer.write_text(json.dumps({"kind": "gpu-speed", "stamp": {"device": "newer"},
                                 "rows": [goal_row(4096, 64, False, "fwd", 1.0, 1.2)]}))
    os.utime(older, (1, 1))
    assert goals.newest_gpu_result(tmp_path) == newer
    assert goals.main([str(newer)]) == 0 and "on newer" in capsys.readouterr().out
    assert goals.main([str(tmp_path / "broken.json")]) == 1
    assert "cannot read a benchmark result" in capsys.readouterr().out
    assert goals.main([str(older)]) == 0 and "no goal row in this run" in capsys.readouterr().out


def test_warm_only_compiles_and_times_nothing(bench, gpu_main, tmp_path):
    """``--warm-only`` (gpu_session.sh runs it beside the GPU tests): the parallel compile, then stop, with
    no JSON written; a later timed run is told ``--warm-workers 0``."""
    assert bench.main(["--results", str(tmp_path), "--warm-only", "--warm-workers", "8"]) == 0
    assert gpu_main == [(8, bench.HEAD_DIMS)] and not list(tmp_path.iterdir())


def test_warm_only_on_a_machine_without_a_gpu_says_so(bench, tmp_path, capsys):
    assert bench.main(["--results", str(tmp_path), "--warm-only"]) == 2
    assert "has none" in capsys.readouterr().out and not list(tmp_path.iterdir())

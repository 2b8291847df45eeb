"""O(T) memory, measured: the tiled reference against the naive scores tensor at T = 16384."""

from attn_course import cost
from attn_course.memory import peak_memory


def test_tiled_peak_memory_is_20x_below_the_naive_scores_tensor_at_16k():
    T = 16384
    scores = cost.scores_bytes(1, 1, T, "fp32")  # 1 GiB
    naive = peak_memory("naive", T)
    tiled = peak_memory("tiled", T)
    assert naive["peak_reset"] and tiled["peak_reset"], "could not reset the peak RSS: measurement not trustworthy"
    # The naive version really does allocate (at least) the whole scores tensor ...
    assert naive["peak_extra_bytes"] >= scores, naive
    # ... and the tiled one needs at least 20x less, output included.
    assert 20 * tiled["peak_extra_bytes"] <= scores, tiled


def test_a_measurement_is_the_live_data_and_repeats():
    """The naive reference holds three [T, T] float32 tensors at its peak (the scores, the masked scores and
    the softmax weights): the measurement must see all three, every time. (Before malloc's threshold was
    fixed, freed blocks kept resident by malloc hid some of them: 7.6 MB one run, 20.8 MB the next.)"""
    T = 1024
    matrix = 4 * T * T
    runs = [peak_memory("naive", T)["peak_extra_bytes"] for _ in range(3)]
    assert all(2.8 * matrix <= r <= 3.3 * matrix for r in runs), [r / matrix for r in runs]
    assert max(runs) - min(runs) <= 0.05 * matrix, runs

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

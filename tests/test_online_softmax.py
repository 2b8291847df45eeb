import pytest
import torch

from attn_course import online_softmax


@pytest.mark.parametrize("block", [1, 3, 64])
@pytest.mark.parametrize("shape,dim", [((7,), -1), ((4, 113), -1), ((5, 6, 17), 1), ((3, 9), 0)])
def test_equals_torch_softmax(shape, dim, block):
    x = torch.randn(*shape) * 5
    torch.testing.assert_close(online_softmax(x, dim, block=block), torch.softmax(x, dim))


def test_large_values_do_not_overflow_and_minus_inf_entries_are_zero():
    x = torch.tensor([[1e4, 1e4 - 1.0, -1e4], [float("-inf"), 0.0, 1.0], [3.0, float("-inf"), float("-inf")]])
    out = online_softmax(x)
    torch.testing.assert_close(out, torch.softmax(x, -1))
    assert out[1, 0] == 0 and torch.isfinite(out).all()


def test_fully_minus_inf_row_is_zeros_where_torch_gives_nan():
    x = torch.full((2, 4), float("-inf"))
    x[1] = torch.arange(4.0)
    out = online_softmax(x)
    assert torch.isnan(torch.softmax(x, -1)[0]).all()
    assert (out[0] == 0).all()
    torch.testing.assert_close(out[1], torch.softmax(x[1], -1))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs(dtype):
    x = torch.randn(4, 50).to(dtype)
    out = online_softmax(x)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), torch.softmax(x.float(), -1), atol=1e-2, rtol=1e-2)


def test_forgetting_the_rescale_would_be_wrong():
    """The recurrence matters: summing exp(x - running max) without rescaling gives a different answer."""
    x = torch.tensor([0.0, 5.0, 1.0])
    m, l_bad = float("-inf"), 0.0
    for xi in x.tolist():
        m = max(m, xi)
        l_bad += torch.exp(torch.tensor(xi - m)).item()  # no l * exp(m_old - m_new)
    assert abs(l_bad - torch.exp(x - 5.0).sum().item()) > 0.5
    torch.testing.assert_close(online_softmax(x), torch.softmax(x, -1))

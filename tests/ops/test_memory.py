import torch

from ffnlab import FeedForward
from ffnlab.ops.memory import saved_tensor_bytes


def test_reference_swiglu_saves_x_and_four_hidden_tensors():
    ffn = FeedForward(16, 40, "swiglu", backend="reference")
    x = torch.randn(10, 16, requires_grad=True)
    nbytes, y = saved_tensor_bytes(lambda: ffn(x), exclude=ffn.parameters())
    assert y.shape == (10, 16)
    # x, then h1, silu(h1), h3, and the product: four [10, 40] fp32 tensors.
    assert nbytes == 4 * (10 * 16 + 4 * 10 * 40)


def test_views_count_once_and_parameters_excluded():
    w = torch.randn(8, 8, requires_grad=True)
    x = torch.randn(4, 8, requires_grad=True)
    with_w, _ = saved_tensor_bytes(lambda: (x @ w) * (x @ w))
    without_w, _ = saved_tensor_bytes(lambda: (x @ w) * (x @ w), exclude=[w])
    assert with_w - without_w == 8 * 8 * 4

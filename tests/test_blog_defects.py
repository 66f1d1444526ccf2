"""The two blog posts' code, copied with its defects, against ffnlab.

The first post's ``FeedForward`` returns ``w2(silu(w1 x)) * w3(x)``: the product sits outside
``w2``, so it cannot run whenever dim != hidden and is not SwiGLU when it does. The second
post's ``SwiGLUFeedForward`` gates with ``x * sigmoid(linear1(x))``, which is not Swish and
cannot run whenever d_model != d_ffn.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ffnlab
from ffnlab import FeedForward


class FirstPostFeedForward(nn.Module):
    """The first blog post's code, verbatim in substance (its defect included)."""

    def __init__(self, dim: int, hidden_dim: int, multiple_of: int, dropout: float):
        super().__init__()
        hidden_dim = multiple_of * ((2 * hidden_dim // 3 + multiple_of - 1) // multiple_of)
        self.w1 = nn.Linear(dim, hidden_dim)
        self.w2 = nn.Linear(hidden_dim, dim)
        self.w3 = nn.Linear(dim, hidden_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.w2(F.silu(self.w1(x))) * self.w3(x))


def _ours_like(post: nn.Module, dim: int, hidden: int) -> FeedForward:
    ours = FeedForward(dim, hidden, "swiglu", bias=True, dtype=torch.float64)
    ours.load_state_dict({k: v for k, v in post.state_dict().items()})
    return ours


def test_first_post_feed_forward_fails_when_dim_differs_from_hidden():
    # The post's own worked case: dim 128, hidden 256 -> 176, input (4, 128).
    post = FirstPostFeedForward(dim=128, hidden_dim=256, multiple_of=16, dropout=0.1)
    assert post.w1.out_features == 176
    with pytest.raises(RuntimeError):
        post(torch.randn(4, 128))  # [4, 128] * [4, 176]
    ours = FeedForward(128, 176, "swiglu", dropout=0.1)
    assert ours(torch.randn(4, 128)).shape == (4, 128)


def test_first_post_feed_forward_is_not_swiglu_when_it_runs():
    torch.manual_seed(0)
    # dim 48, hidden 72 -> 2*72//3 = 48 = dim: the only case where the post's code runs.
    post = FirstPostFeedForward(dim=48, hidden_dim=72, multiple_of=8, dropout=0.0).double()
    assert post.w1.out_features == 48
    ours = _ours_like(post, 48, 48)
    x = torch.randn(5, 48, dtype=torch.float64)
    assert (ours(x) - post(x)).abs().max() > 1e-3
    # ffnlab's is SwiGLU: the product inside w2.
    torch.testing.assert_close(ours(x), post.w2(F.silu(post.w1(x)) * post.w3(x)))
    # ... and the post's is the product outside w2, exactly as written.
    torch.testing.assert_close(post(x), post.w2(F.silu(post.w1(x))) * post.w3(x))


class SecondPostSwiGLU(nn.Module):
    """The second blog post's code, verbatim in substance: x * sigmoid(linear1(x))."""

    def __init__(self, d_model, d_ffn):
        super().__init__()
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.linear2 = nn.Linear(d_model, d_ffn)
        self.linear3 = nn.Linear(d_ffn, d_model)

    def forward(self, x):
        swish = x * torch.sigmoid(self.linear1(x))
        return self.linear3(swish * self.linear2(x))


def test_second_post_swiglu_is_wrong():
    # With d_model != d_ffn it cannot even run (x [.., d_model] times [.., d_ffn]).
    with pytest.raises(RuntimeError):
        SecondPostSwiGLU(8, 16)(torch.randn(2, 8))
    # With d_model == d_ffn it runs but is not SwiGLU: same weights, different outputs.
    wrong = SecondPostSwiGLU(8, 8).double()
    ours = FeedForward(8, 8, "swiglu", bias=True, dtype=torch.float64)
    with torch.no_grad():
        ours.w1.weight.copy_(wrong.linear1.weight)
        ours.w1.bias.copy_(wrong.linear1.bias)
        ours.w3.weight.copy_(wrong.linear2.weight)
        ours.w3.bias.copy_(wrong.linear2.bias)
        ours.w2.weight.copy_(wrong.linear3.weight)
        ours.w2.bias.copy_(wrong.linear3.bias)
    x = torch.randn(5, 8, dtype=torch.float64)
    assert (ours(x) - wrong(x)).abs().max() > 1e-3
    h1, h3 = wrong.linear1(x), wrong.linear2(x)
    # The post's gate is x * sigma(W1 x), not Swish ...
    torch.testing.assert_close(wrong(x), wrong.linear3(x * torch.sigmoid(h1) * h3))
    # ... and ours is the correct gate: swish(W1 x) = (W1 x) sigma(W1 x).
    torch.testing.assert_close(ours(x), wrong.linear3(h1 * torch.sigmoid(h1) * h3))
    assert ffnlab.get_variant("swiglu").activation == "swish"

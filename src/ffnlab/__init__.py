"""ffnlab: the Transformer feed-forward block (FFN) and its activation functions.

>>> import ffnlab, torch
>>> ffn = ffnlab.FeedForward(64, variant="swiglu")
>>> ffn(torch.randn(2, 5, 64)).shape
torch.Size([2, 5, 64])
"""

from . import activations, parallel
from .errors import UsageError
from .ffn import FeedForward
from .interop import from_hf, patch_hf, register_hf, unpatch_hf
from .moe import MoEFeedForward
from .sizing import default_hidden_dim, ffn_flops_per_token, ffn_params, llama_hidden_dim
from .variants import ALIASES, VARIANTS, Variant, get_variant

__version__ = "0.1.0"

__all__ = [
    "ALIASES",
    "FeedForward",
    "UsageError",
    "VARIANTS",
    "Variant",
    "activations",
    "default_hidden_dim",
    "ffn_flops_per_token",
    "ffn_params",
    "from_hf",
    "get_variant",
    "llama_hidden_dim",
    "MoEFeedForward",
    "parallel",
    "patch_hf",
    "register_hf",
    "unpatch_hf",
]

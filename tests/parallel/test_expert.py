"""Expert parallelism (ffnlab.parallel.expert_parallel) over 2 CPU processes with gloo.

As tests/test_parallel.py: the test runs this file as a script once; it forks two ranks on
127.0.0.1, each runs every case against an unsharded float64 copy on the concatenated batch of
both ranks, and rank 0 writes the outcome per case to a JSON file.
"""

from __future__ import annotations

import copy

import pytest
import torch

from ffnlab import MoEFeedForward
from ffnlab.errors import UsageError
from gloo_cases import ranks_results, run_ranks

WORLD = 2
DIM, HIDDEN = 6, 10  # float64 and dims not multiples of 4: the per-segment fallback runs


def _moe(**kw) -> MoEFeedForward:
    torch.manual_seed(1)
    return MoEFeedForward(DIM, HIDDEN, dtype=torch.float64, **kw)


def _compare(ref: MoEFeedForward, mesh, n_tokens=(5, 3)) -> None:
    """Rank r's output and gradients equal the unsharded module's on both ranks' tokens."""
    import torch.distributed as dist

    from ffnlab.parallel import expert_parallel

    rank = dist.get_rank()
    ep = expert_parallel(copy.deepcopy(ref), mesh)
    torch.manual_seed(2)  # the same on both ranks: every rank knows the whole batch
    x = torch.randn(sum(n_tokens), DIM, dtype=torch.float64)
    g = torch.randn_like(x)
    lo = sum(n_tokens[:rank])
    sl = slice(lo, lo + n_tokens[rank])
    x_ref, x_ep = x.clone().requires_grad_(), x[sl].clone().requires_grad_()
    y_ref, y_ep = ref(x_ref), ep(x_ep)
    torch.testing.assert_close(y_ep, y_ref[sl], rtol=1e-10, atol=1e-10)
    y_ref.backward(g)
    y_ep.backward(g[sl])
    torch.testing.assert_close(x_ep.grad, x_ref.grad[sl], rtol=1e-10, atol=1e-10)
    n_local = ref.n_experts // WORLD
    ref_params = dict(ref.named_parameters())
    for name, p in ep.named_parameters():
        grad = p.grad.clone()
        if name.startswith("experts."):  # local experts: already summed over ranks' tokens
            want = ref_params[name].grad[rank * n_local : (rank + 1) * n_local]
        else:  # replicated: this rank's tokens only, summed over ranks as DDP would
            dist.all_reduce(grad)
            want = ref_params[name].grad
        torch.testing.assert_close(grad, want, rtol=1e-10, atol=1e-10, msg=name)
    assert ep.experts.w1.shape == (n_local, HIDDEN, DIM)
    counts = ep.tokens_per_expert.clone()
    dist.all_reduce(counts)
    assert counts.tolist() == ref.tokens_per_expert.tolist()


def case_softmax_shared(mesh):
    _compare(_moe(n_experts=4, top_k=2, variant="swiglu", n_shared=1, shared_gate=True), mesh)


def case_sigmoid_groups_bias(mesh):
    ref = _moe(n_experts=4, top_k=2, variant="gelu", router="sigmoid", n_group=2,
               topk_group=1, routed_scaling=2.5)  # fmt: skip
    with torch.no_grad():
        ref.router.bias.copy_(torch.tensor([0.3, -0.2, 0.1, 0.0]))
    _compare(ref, mesh)


def case_input_gate_top1_empty_rank(mesh):
    # 2 tokens on rank 1, top-1 of 2 experts: some exchanges carry no row at all
    _compare(_moe(n_experts=2, top_k=1, variant="relu", router="sigmoid_input"), mesh, (4, 1))


def case_expert_norm(mesh):
    ref = _moe(n_experts=4, top_k=2, variant="relu2", router="sigmoid", expert_norm=True,
               norm_eps=1e-5)  # fmt: skip
    with torch.no_grad():
        ref.experts.norm.uniform_(0.5, 1.5)
    _compare(ref, mesh)


def case_errors(mesh):
    from ffnlab.parallel import expert_parallel

    for n, match in ((1, "has 2 ranks but the MoE has only 1 experts"),
                     (3, "n_experts=3 does not divide by the expert-parallel mesh size 2")):  # fmt: skip
        try:
            expert_parallel(_moe(n_experts=n, top_k=1), mesh)
        except UsageError as e:
            assert match in str(e), str(e)
        else:
            raise AssertionError(f"n_experts={n}: no error")
    try:
        expert_parallel(torch.nn.Linear(2, 2), mesh)
    except TypeError:
        pass
    else:
        raise AssertionError("a Linear was accepted")


CASES = {name[5:]: fn for name, fn in list(globals().items()) if name.startswith("case_")}


@pytest.fixture(scope="module")
def ep_results(tmp_path_factory):
    return ranks_results(__file__, tmp_path_factory.mktemp("ep"))


@pytest.mark.parametrize("case", list(CASES))
def test_expert_parallel_case(ep_results, case):
    assert ep_results[case] == "ok", ep_results[case]


if __name__ == "__main__":
    run_ranks(CASES, world=WORLD)

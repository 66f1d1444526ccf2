"""Device ceilings and the machine's identity."""

import torch

from ffnlab.bench.machine import best_ceilings, copy_bandwidth, machine_info, matmul_rate


def test_best_ceilings_keeps_the_higher_of_each():
    a = {"copy_bytes_per_s": 5.0, "matmul_flops_per_s": 9.0, "matmul_n": 8}
    b = {"copy_bytes_per_s": 7.0, "matmul_flops_per_s": 3.0, "matmul_n": 8}
    assert best_ceilings(a, b) == {"copy_bytes_per_s": 7.0, "matmul_flops_per_s": 9.0,
                                   "matmul_n": 8}


def test_small_ceilings_and_machine_info():
    cpu = torch.device("cpu")
    copy = copy_bandwidth(cpu, nbytes=1 << 16, repeats=1)
    assert copy["buffer_bytes"] == 1 << 16 and copy["bytes_per_s"] > 0
    mm = matmul_rate(cpu, torch.float32, n=32, repeats=1)
    assert mm["n"] == 32 and mm["flops_per_s"] == 2 * 32**3 / mm["seconds"]
    info = machine_info(cpu)
    assert info["device"] == "cpu" and info["gpu"] is None and info["torch"] == torch.__version__

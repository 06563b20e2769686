"""The benchmark's roofline counts (benchmarks/roofline.py) against graphnn's own training graph:
the FLOPs it charges a dense workload are the products the derived backward graph computes."""

import math
import sys
from pathlib import Path

import pytest

import graphnn as gn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from peer_graphnn import build_graph  # noqa: E402
from roofline import Machine, step_work  # noqa: E402
from workloads import get_workload  # noqa: E402


def _product_flops_per_sample(graph) -> int:
    """2·m·k·n of every matmul of the training graph, per sample of the batch (dim None)."""
    total = 0
    for node in graph.training.nodes:
        if node.op != "matmul":
            continue
        a = graph.training.node(node.inputs[0])
        contracted = 1 if node.attr("ta") else a.shape[-1]  # ta: the batch is contracted
        total += 2 * math.prod(d for d in node.shape if d is not None) * contracted
    return total


@pytest.mark.parametrize("name", ["neuron", "digits", "mnist_mlp", "wide"])
def test_roofline_flops_are_the_training_graphs_products(name):
    wl = get_workload(name)
    graph = build_graph(gn, wl)
    assert step_work(wl).flops_per_sample == _product_flops_per_sample(graph)


def test_the_bound_adds_compute_and_memory_time():
    work = step_work(get_workload("mnist_mlp"))
    fast_memory = Machine(gemm_flops=1e11, bandwidth=1e30)
    fast_gemm = Machine(gemm_flops=1e30, bandwidth=1e10)
    both = Machine(gemm_flops=1e11, bandwidth=1e10)
    per_sample = [1 / work.bound_samples_per_s(m) for m in (fast_memory, fast_gemm, both)]
    assert per_sample[2] == pytest.approx(per_sample[0] + per_sample[1])
    assert per_sample[0] == pytest.approx(work.flops_per_sample / 1e11)

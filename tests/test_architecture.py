"""The package's layers (pyproject's import-linter contracts) and the absence of import cycles.

grimp (import-linter's graph) reads every import statement, including those inside functions,
so a cycle hidden behind a lazy import is found too.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("ffnlab", include_external_packages=True)


def _modules(graph: grimp.ImportGraph) -> list[str]:
    return sorted(m for m in graph.modules if m == "ffnlab" or m.startswith("ffnlab."))


def test_no_module_imports_one_that_imports_it_back(graph):
    cycles = []
    for m in _modules(graph):
        for n in graph.find_modules_directly_imported_by(m):
            if not n.startswith("ffnlab") or n == m:
                continue
            # A package's __init__ importing its own submodule is how packages re-export; the
            # submodule importing the package back would close a cycle, and is caught here.
            if graph.chain_exists(importer=n, imported=m):
                cycles.append(graph.find_shortest_chain(importer=n, imported=m) + (n,))
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("package", ["ffnlab.lab", "ffnlab.bench"])
@pytest.mark.parametrize("forbidden", ["argparse", "ffnlab.cli", "ffnlab.commands"])
def test_lab_and_bench_never_reach_the_command_line(graph, package, forbidden):
    chains = _chains(graph, package, forbidden)
    assert not chains, f"{package} reaches {forbidden}: {chains}"


def _chains(graph: grimp.ImportGraph, package: str, forbidden: str) -> list:
    """Every shortest import chain from ``package`` (and its modules) to ``forbidden`` (and its
    modules), lazy imports included; fails when either side is missing from the graph, where
    the caller's check would see nothing."""
    sources = [m for m in _modules(graph) if m == package or m.startswith(package + ".")]
    assert len(sources) > 3, f"{package} has moved: this test would check nothing"
    targets = [t for t in graph.modules if t == forbidden or t.startswith(forbidden + ".")]
    assert targets, f"{forbidden} is not in the graph: this test would check nothing"
    return [c for s in sources for t in targets
            if (c := graph.find_shortest_chain(importer=s, imported=t))]


def test_import_linter_contracts_hold():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if exe is None:  # pragma: no cover - the dev extra installs it
        pytest.fail("lint-imports is not installed (pip install -e '.[dev]')")
    proc = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_a_broken_layer_is_reported(tmp_path):
    """The contract check can fail: a graph with an upward import breaks the layers contract."""
    g = grimp.build_graph("ffnlab")
    g.add_import(importer="ffnlab.ops.reference", imported="ffnlab.lab")
    illegal = g.find_illegal_dependencies_for_layers(
        layers=["lab", "bench", "ffn", "ops"], containers={"ffnlab"}
    )
    assert illegal, "an ops -> lab import must break the layers"


@pytest.mark.parametrize("package", ["ffnlab.lab.stats", "ffnlab.lab.claims", "ffnlab.lab.report"])
@pytest.mark.parametrize("forbidden", ["torch", "ffnlab.lab.train", "ffnlab.lab.run",
                                       "ffnlab.lab.measure"])
def test_numbers_rooms_never_reach_torch_or_training(graph, package, forbidden):
    """The statistics, the claims and the report work on numbers and JSON (readable and
    testable alone): no chain of imports, lazy ones included, reaches torch or the training."""
    chains = _chains(graph, package, forbidden)
    assert not chains, f"{package} reaches {forbidden}: {chains[:3]}"


def test_lab_files_stay_small():
    """One idea per file: no module of the lab above 400 lines."""
    lab = ROOT / "src" / "ffnlab" / "lab"
    sizes = {str(p.relative_to(lab)): len(p.read_text().splitlines()) for p in lab.rglob("*.py")}
    assert len(sizes) > 20
    assert {k: n for k, n in sizes.items() if n > 400} == {}

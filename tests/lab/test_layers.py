"""The lab is a layer below the command line: typed entry points, no argument parsing."""

from __future__ import annotations

import pytest

grimp = pytest.importorskip("grimp")

# The bench modules still under lab/ are moving to ffnlab.bench (with their command module);
# drop this exclusion once they have.
MOVING = frozenset({"ffnlab.lab.bench"})


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph("ffnlab", include_external_packages=True)


def _lab_modules(graph) -> list[str]:
    mods = sorted(m for m in graph.modules if m == "ffnlab.lab" or m.startswith("ffnlab.lab."))
    assert "ffnlab.lab.compare" in mods and "ffnlab.lab.config" in mods
    return [m for m in mods if m not in MOVING]


def _command_line(graph) -> list[str]:
    mods = sorted(m for m in graph.modules
                  if m in ("ffnlab.cli", "ffnlab.commands") or m.startswith("ffnlab.commands."))
    assert "ffnlab.cli" in mods and "ffnlab.commands.compare" in mods
    return mods


def test_no_lab_module_imports_argparse(graph):
    offenders = {m: "argparse" for m in _lab_modules(graph)
                 if "argparse" in graph.find_modules_directly_imported_by(m)}
    assert offenders == {}


def test_no_lab_module_reaches_the_command_line(graph):
    chains = {}
    for m in _lab_modules(graph):
        for target in _command_line(graph):
            chain = graph.find_shortest_chain(importer=m, imported=target)
            if chain:
                chains[m] = chain
    assert chains == {}

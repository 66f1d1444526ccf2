"""``scripts/hf_model_tests.py`` (runs transformers' model tests plain and patched) and its
plugin ``scripts/ffnlab_patch_plugin.py``, without a transformers source tree or network.

The harness's own logic runs on junit files and patch logs written here: outcome parsing
(failure, error, skipped, passed), counts, the differing tests, the pass-set comparison, node-id
keys and the log totals. The plugin's construction hook runs on the installed transformers: a
tiny Llama built in code is patched once, as the outermost model (not as its nested
``LlamaModel``), and ``from_pretrained`` patches after loading, not on the meta device.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)  # dataclasses look their module up
    spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


harness = _load("hf_model_tests")
plugin = _load("ffnlab_patch_plugin")

CLS = "tests.models.mixtral.test_modeling_mixtral.MixtralModelTest"


def _junit(path: Path, cases: dict[str, str]) -> Path:
    """A pytest-style junit file: ``{name: outcome}`` under one class."""
    body = []
    for name, outcome in cases.items():
        inner = {
            "passed": "",
            "failed": '<failure message="AssertionError: Expected \'mock\' to have been called.'
                      '&#10;second line">trace</failure>',
            "error": '<error message="failed on setup with &quot;OSError&quot;">trace</error>',
            "skipped": '<skipped type="pytest.skip" message="Model has no experts">x</skipped>',
        }[outcome]
        body.append(f'<testcase classname="{CLS}" name="{name}" time="0.1">{inner}</testcase>')
    path.write_text('<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">'
                    + "".join(body) + "</testsuite></testsuites>")
    return path


def test_parse_junit_outcomes_and_first_message_line(tmp_path):
    cases = harness.parse_junit(_junit(tmp_path / "a.xml", {
        "test_a": "passed", "test_b": "failed", "test_c": "error", "test_d": "skipped"}))
    assert cases[f"{CLS}::test_a"] == harness.Outcome("passed")
    assert cases[f"{CLS}::test_b"] == harness.Outcome(
        "failed", "AssertionError: Expected 'mock' to have been called.")
    assert cases[f"{CLS}::test_c"].outcome == "error"
    assert cases[f"{CLS}::test_d"] == harness.Outcome("skipped", "Model has no experts")
    assert harness.counts(cases) == {"passed": 1, "failed": 1, "error": 1, "skipped": 1,
                                     "total": 4}


def test_parse_junit_names_a_missing_or_broken_file(tmp_path):
    with pytest.raises(ValueError, match="missing.xml"):
        harness.parse_junit(tmp_path / "missing.xml")
    (tmp_path / "bad.xml").write_text("<testsuites><testcase")
    with pytest.raises(ValueError, match="bad.xml"):
        harness.parse_junit(tmp_path / "bad.xml")


def test_differences_and_pass_sets(tmp_path):
    plain = harness.parse_junit(_junit(tmp_path / "p.xml", {
        "test_a": "passed", "test_b": "passed", "test_c": "skipped", "test_gone": "passed"}))
    patched = harness.parse_junit(_junit(tmp_path / "q.xml", {
        "test_a": "passed", "test_b": "failed", "test_c": "error", "test_new": "skipped"}))
    rows = harness.differences(plain, patched)
    assert [(r["test"].split("::")[1], r["plain"], r["patched"]) for r in rows] == [
        ("test_b", "passed", "failed"), ("test_c", "skipped", "error"),
        ("test_gone", "passed", "absent"), ("test_new", "absent", "skipped")]
    assert rows[0]["message"].startswith("AssertionError")
    assert not harness.same_pass_set(plain, patched)
    assert harness.same_pass_set(plain, plain)
    assert harness.differences(plain, plain) == []
    # a skip turning into an error changes no pass set, but is still listed as a difference
    only_skip = harness.parse_junit(_junit(tmp_path / "r.xml", {"test_c": "error"}))
    skip = harness.parse_junit(_junit(tmp_path / "s.xml", {"test_c": "skipped"}))
    assert harness.same_pass_set(skip, only_skip) and harness.differences(skip, only_skip)


def test_junit_key_matches_parse_junit():
    nodeid = "tests/models/mixtral/test_modeling_mixtral.py::MixtralModelTest::test_b"
    assert harness.junit_key(nodeid) == f"{CLS}::test_b"
    assert harness.junit_key("tests/test_x.py::test_f") == "tests.test_x::test_f"


def test_read_patch_log_totals_over_processes(tmp_path):
    test = "tests/models/mixtral/test_modeling_mixtral.py::MixtralModelTest::test_b"
    rows = {
        1: [dict(test=test, model="MixtralForCausalLM", patched=2, left=[], error=None),
            dict(test=test, model="MixtralModel", patched=0, left=[], error=None,
                 skipped="parameters on the meta device")],
        2: [dict(test=test, model="MixtralForCausalLM", patched=0, error="ValueError: x",
                 left=["ffnlab.patch_hf left 1 MLP module(s) unchanged: ..."])],
    }
    for pid, records in rows.items():
        (tmp_path / f"patch-{pid}.jsonl").write_text(
            "".join(json.dumps({"pid": pid, "phase": "call", **r}) + "\n" for r in records))
    totals = harness.read_patch_log(tmp_path)
    assert totals == {
        "models": 2, "patched_models": 1, "with_left": 1, "blocks": 2, "processes": 2, "meta": 1,
        "errors": {"ValueError: x": 1},
        "left": {"ffnlab.patch_hf left 1 MLP module(s) unchanged: ...": 1},
        "by_test": {f"{CLS}::test_b": 2},
    }
    assert harness.read_patch_log(tmp_path / "none")["blocks"] == 0


def test_report_says_how_much_was_patched():
    entry = {"status": "differ",
             "plain": {"passed": 3, "failed": 0, "error": 0, "skipped": 1, "total": 4,
                       "wall_s": 1.0},
             "patched": {"passed": 2, "failed": 1, "error": 0, "skipped": 1, "total": 4,
                         "wall_s": 1.5},
             "patching": {"models": 5, "processes": 1, "patched_models": 4, "blocks": 8,
                          "with_left": 0, "meta": 0, "left": {}, "errors": {}},
             "differ": [{"test": f"{CLS}::test_b", "plain": "passed", "patched": "failed",
                         "message": "AssertionError"}]}
    text = harness.report("mixtral", entry)
    assert "passed 3/4" in text and "passed 2/4" in text
    assert "8 blocks replaced" in text and "test_b: passed -> failed" in text


@pytest.fixture
def hooked(tmp_path, monkeypatch):
    """The plugin's hook installed in this process, logging to ``tmp_path``, then removed."""
    pytest.importorskip("transformers")
    monkeypatch.setenv(plugin.LOG_ENV, str(tmp_path / "log"))
    plugin.install()
    plugin.install()  # idempotent: one wrapping
    yield tmp_path / "log"
    plugin.uninstall()


def _records(folder: Path) -> list[dict]:
    return [json.loads(line) for f in sorted(folder.glob("*.jsonl"))
            for line in f.read_text().splitlines()]


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=64)
    return LlamaForCausalLM(config)


def test_plugin_patches_the_outermost_model_once(hooked):
    from ffnlab.interop.hf_modules import HFFeedForward

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = _tiny_llama()
    assert sum(isinstance(m, HFFeedForward) for m in model.modules()) == 2
    (record,) = _records(hooked)  # LlamaModel's own post_init is nested: not logged
    assert record["model"] == "LlamaForCausalLM" and record["how"] == "init"
    assert record["patched"] == 2 and record["phase"] == "call"  # pytest's PYTEST_CURRENT_TEST
    assert record["test"].endswith("::test_plugin_patches_the_outermost_model_once")


def test_plugin_patches_from_pretrained_after_loading(hooked, tmp_path):
    from transformers import LlamaForCausalLM

    from ffnlab.interop.hf_modules import HFFeedForward

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _tiny_llama().save_pretrained(tmp_path / "saved")
        loaded = LlamaForCausalLM.from_pretrained(tmp_path / "saved")
    assert sum(isinstance(m, HFFeedForward) for m in loaded.modules()) == 2
    hows = [(r["how"], r["patched"]) for r in _records(hooked)]
    assert hows == [("init", 2), ("from_pretrained", 2)]


def test_uninstall_leaves_models_unpatched(hooked):
    plugin.uninstall()
    from ffnlab.interop.hf_modules import HFFeedForward

    model = _tiny_llama()
    assert not any(isinstance(m, HFFeedForward) for m in model.modules())
    assert _records(hooked) == []

"""Run transformers' own model test files plain and with every model patched by
:func:`ffnlab.patch_hf` as it is built, and compare the two pass sets.

    OMP_NUM_THREADS=1 python scripts/hf_model_tests.py --transformers-root /work/tf-src \\
        --python /work/tf-venv/bin/python [--out runs/hf-model-tests] [-k EXPR] [-n JOBS] \\
        [FAMILY ...]          # default: mixtral qwen3_moe gpt_oss deepseek_v3 llama

The tests are those of a transformers source tree (the wheel ships none), run by a Python whose
``transformers`` is that same tree installed editable, so that source and tests agree; that
environment needs pytest, ``parameterized`` and ``datasets`` (and ``pytest-xdist`` for
``-n``). ffnlab comes from this checkout's ``src/`` (``--ffnlab-src``).

For each family, ``tests/models/<family>/test_modeling_<family>.py`` runs twice with
``--junitxml``: plain, then with ``-p ffnlab_patch_plugin`` (``scripts/ffnlab_patch_plugin.py``),
which patches every model right after it is built, in the test process and, through
``scripts/hf_patch_site/sitecustomize.py``, in the worker processes the distributed tests
spawn. The script prints per family the passed/failed/error/skipped counts of both runs, each
test whose outcome differs with the patched run's failure message, and how many models were
built and how many MLP / mixture-of-experts blocks ``patch_hf`` replaced (with the distinct
reasons it gave for what it left), so that a run in which nothing was patched cannot pass as
equal. It writes ``summary.json``, both junit files and pytest's output per run under
``--out`` (``--no-run`` summarises those again without running anything).

Exit status: 0 when every family's pass sets are equal and something was patched in each; 1
when a pass set differs; 2 when a family's patched run patched nothing or a run produced no
junit file (collection crashed).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass

SCRIPTS = pathlib.Path(__file__).resolve().parent
ROOT = SCRIPTS.parent
FAMILIES = ("mixtral", "qwen3_moe", "gpt_oss", "deepseek_v3", "llama")
OUTCOMES = ("passed", "failed", "error", "skipped")


@dataclass(frozen=True)
class Outcome:
    """One test case of a junit file: ``outcome`` one of :data:`OUTCOMES`, ``message`` the
    first line of its failure, error or skip message (empty when it passed)."""

    outcome: str
    message: str = ""


def parse_junit(path: pathlib.Path | str) -> dict[str, Outcome]:
    """The test cases of a pytest ``--junitxml`` file, keyed ``"classname::name"``.

    A case with a ``<failure>`` is failed, else one with an ``<error>`` (a setup or teardown
    error) is error, else one with a ``<skipped>`` is skipped, else passed. A missing or
    malformed file raises ``ValueError`` naming it."""
    path = pathlib.Path(path)
    try:
        tree = ET.parse(path)
    except (OSError, ET.ParseError) as error:
        raise ValueError(f"cannot read junit file {path}: {error}") from error
    cases: dict[str, Outcome] = {}
    for case in tree.iter("testcase"):
        key = f"{case.get('classname', '')}::{case.get('name', '')}"
        for tag, outcome in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
            element = case.find(tag)
            if element is not None:
                text = element.get("message") or (element.text or "")
                cases[key] = Outcome(outcome, text.strip().splitlines()[0][:400] if text.strip()
                                     else "")
                break
        else:
            cases[key] = Outcome("passed")
    return cases


def counts(cases: dict[str, Outcome]) -> dict[str, int]:
    """How many cases have each outcome of :data:`OUTCOMES`, and ``total``."""
    seen = Counter(case.outcome for case in cases.values())
    return {**{outcome: seen[outcome] for outcome in OUTCOMES}, "total": len(cases)}


def differences(plain: dict[str, Outcome], patched: dict[str, Outcome]) -> list[dict]:
    """The tests whose outcome differs between the runs (a test missing from one run counts as
    ``"absent"`` there), sorted by name, each with both outcomes and the patched message."""
    rows = []
    for key in sorted(plain.keys() | patched.keys()):
        a = plain.get(key, Outcome("absent"))
        b = patched.get(key, Outcome("absent"))
        if a.outcome != b.outcome:
            rows.append({"test": key, "plain": a.outcome, "patched": b.outcome,
                         "message": b.message or a.message})
    return rows


def same_pass_set(plain: dict[str, Outcome], patched: dict[str, Outcome]) -> bool:
    """Whether exactly the same tests passed in both runs."""
    passed = lambda cases: {k for k, v in cases.items() if v.outcome == "passed"}
    return passed(plain) == passed(patched)


def junit_key(nodeid: str) -> str:
    """pytest's node id (``"tests/m/test_x.py::Class::test_y"``) as :func:`parse_junit` keys it
    (``"tests.m.test_x.Class::test_y"``)."""
    parts = nodeid.split("::")
    module = parts[0].removesuffix(".py").replace("/", ".")
    return ".".join([module, *parts[1:-1]]) + "::" + parts[-1]


def read_patch_log(folder: pathlib.Path | str) -> dict:
    """Totals of ``ffnlab_patch_plugin``'s JSON-lines logs in ``folder`` (every process's file).

    ``models``: models built and handed to ``patch_hf``; ``patched_models``: those with at
    least one block replaced; ``with_left``: those in which ``patch_hf`` left a block (an
    equal pass set says nothing about a block left alone); ``blocks``: blocks replaced in all; ``processes``: how many
    processes logged (spawned workers included); ``errors`` and ``left``: distinct error and
    warning texts with how often each came; ``meta``: models skipped because they were on the
    meta device; ``by_test``: blocks patched per test, keyed as :func:`parse_junit` keys."""
    records = []
    for file in sorted(pathlib.Path(folder).glob("patch-*.jsonl")):
        for line in file.read_text(encoding="utf-8").splitlines():
            if line.strip():
                records.append(json.loads(line))
    handed = [r for r in records if not r.get("skipped")]
    by_test: Counter = Counter()
    for r in handed:
        by_test[junit_key(r["test"])] += r["patched"]
    return {
        "models": len(handed),
        "patched_models": sum(1 for r in handed if r["patched"] > 0),
        "with_left": sum(1 for r in handed if r["left"]),
        "blocks": sum(r["patched"] for r in handed),
        "processes": len({r["pid"] for r in records}),
        "meta": len(records) - len(handed),
        "errors": dict(Counter(r["error"] for r in handed if r.get("error")).most_common()),
        "left": dict(Counter(m for r in handed for m in r["left"]).most_common()),
        "by_test": dict(by_test),
    }


def _pytest_has(python: str, module: str) -> bool:
    probe = subprocess.run([python, "-c", f"import {module}"], capture_output=True)
    return probe.returncode == 0


def run_pytest(*, python: str, tf_root: pathlib.Path, test_file: str, junit: pathlib.Path,
               log: pathlib.Path, env: dict, keyword: str | None, jobs: int, timeout: int,
               plugin: bool) -> float:
    """Run one test file with pytest in ``tf_root``; pytest's output goes to ``log``. Return the
    wall time in seconds."""
    cmd = [python, "-m", "pytest", test_file, "-p", "no:cacheprovider", "-q", "-rN",
           f"--junitxml={junit}", f"--timeout={timeout}"]
    if plugin:
        cmd += ["-p", "ffnlab_patch_plugin"]
    if keyword:
        cmd += ["-k", keyword]
    if jobs > 1:
        cmd += ["-n", str(jobs)]
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as out:
        out.write(" ".join(cmd) + "\n")
        out.flush()
        subprocess.run(cmd, cwd=tf_root, env=env, stdout=out, stderr=subprocess.STDOUT)
    return time.perf_counter() - start


def run_family(family: str, args, out: pathlib.Path, jobs: int) -> dict:
    """Both runs of one family; the family's entry of ``summary.json``."""
    test_file = f"tests/models/{family}/test_modeling_{family}.py"
    if not (args.transformers_root / test_file).is_file():
        raise SystemExit(f"no test file {test_file} under {args.transformers_root}")
    base = {k: v for k, v in os.environ.items() if k != "FFNLAB_PATCH_LOG"}
    base.setdefault("OMP_NUM_THREADS", "1")
    patch_log = out / f"{family}-patch-log"
    if not args.no_run:
        shutil.rmtree(patch_log, ignore_errors=True)
    path = [str(SCRIPTS / "hf_patch_site"), str(SCRIPTS), str(args.ffnlab_src)]
    if base.get("PYTHONPATH"):
        path.append(base["PYTHONPATH"])
    patched_env = {**base, "PYTHONPATH": os.pathsep.join(path), "FFNLAB_PATCH_LOG": str(patch_log)}
    entry: dict = {"test_file": test_file}
    cases = {}
    for run, env, plugin in (("plain", base, False), ("patched", patched_env, True)):
        junit = out / f"{family}-{run}.xml"
        wall = None
        if not args.no_run:
            junit.unlink(missing_ok=True)
            print(f"[{family}] {run} run ...", flush=True)
            wall = run_pytest(python=args.python, tf_root=args.transformers_root,
                              test_file=test_file, junit=junit, log=out / f"{family}-{run}.log",
                              env=env, keyword=args.k, jobs=jobs, timeout=args.timeout,
                              plugin=plugin)
        try:
            cases[run] = parse_junit(junit)
        except ValueError as error:
            entry[run] = {"junit_error": str(error), "wall_s": wall and round(wall, 1)}
            return entry | {"status": "no junit"}
        entry[run] = counts(cases[run]) | {"wall_s": wall and round(wall, 1)}
    entry["differ"] = differences(cases["plain"], cases["patched"])
    patching = read_patch_log(patch_log)
    for row in entry["differ"]:
        row["blocks_patched_in_test"] = patching["by_test"].get(row["test"], 0)
    entry["patching"] = {k: v for k, v in patching.items() if k != "by_test"}
    if patching["blocks"] == 0:
        entry["status"] = "nothing patched"
    else:
        entry["status"] = "same" if same_pass_set(cases["plain"], cases["patched"]) else "differ"
    return entry


def report(family: str, entry: dict) -> str:
    """The lines printed for one family."""
    lines = [f"== {family}: {entry['status']}"]
    for run in ("plain", "patched"):
        r = entry.get(run, {})
        if "junit_error" in r:
            lines.append(f"  {run:8s} {r['junit_error']}")
        elif r:
            lines.append(f"  {run:8s} passed {r['passed']}/{r['total']}, failed {r['failed']}, "
                         f"error {r['error']}, skipped {r['skipped']}"
                         + (f"  ({r['wall_s']} s)" if r["wall_s"] is not None else ""))
    p = entry.get("patching")
    if p:
        lines.append(f"  patching: {p['models']} models built ({p['processes']} processes), "
                     f"{p['patched_models']} patched, {p['blocks']} blocks replaced, "
                     f"{p['with_left']} with blocks left, {p['meta']} skipped on meta")
        for text, n in list(p["left"].items())[:8]:
            lines.append(f"    left x{n}: {text[:300]}")
        for text, n in p["errors"].items():
            lines.append(f"    patch_hf raised x{n}: {text[:300]}")
    for row in entry.get("differ", []):
        lines.append(f"  differs: {row['test']}: {row['plain']} -> {row['patched']}: "
                     f"{row['message'][:300]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("families", nargs="*", default=list(FAMILIES),
                        help=f"model families (default: {' '.join(FAMILIES)})")
    parser.add_argument("--transformers-root", type=pathlib.Path, required=True,
                        help="a transformers source tree (with tests/)")
    parser.add_argument("--python", default=sys.executable,
                        help="the Python whose transformers is that tree (default: this one)")
    parser.add_argument("--ffnlab-src", type=pathlib.Path, default=ROOT / "src")
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "runs" / "hf-model-tests")
    parser.add_argument("-k", default=None, help="pytest -k expression for both runs")
    parser.add_argument("-n", "--jobs", type=int, default=1,
                        help="pytest-xdist workers (sequential when 1 or xdist is missing)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per test")
    parser.add_argument("--no-run", action="store_true",
                        help="summarise the junit files and logs already in --out")
    args = parser.parse_args(argv)
    args.transformers_root = args.transformers_root.resolve()
    if not (args.transformers_root / "tests" / "models").is_dir():
        parser.error(f"--transformers-root {args.transformers_root} has no tests/models")
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = args.jobs
    if jobs > 1 and not _pytest_has(args.python, "xdist"):
        print("pytest-xdist is not installed there: running sequentially", flush=True)
        jobs = 1
    version = subprocess.run(
        [args.python, "-c", "import transformers; print(transformers.__version__)"],
        capture_output=True, text=True, cwd=args.transformers_root,
    ).stdout.strip()
    summary = {"transformers": version, "transformers_root": str(args.transformers_root),
               "date": datetime.date.today().isoformat(), "k": args.k, "families": {}}
    for family in args.families:
        entry = run_family(family, args, args.out, jobs)
        summary["families"][family] = entry
        print(report(family, entry), flush=True)
        (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    statuses = {e["status"] for e in summary["families"].values()}
    print(f"transformers {version} ({args.transformers_root}); summary: "
          f"{args.out / 'summary.json'}")
    if statuses - {"same", "differ"}:
        return 2
    return 1 if "differ" in statuses else 0


if __name__ == "__main__":
    sys.exit(main())

"""Patch a tiny random model of every causal-LM family of the installed transformers and write
the family table of docs/interop.md (between its two ``interop-families`` markers).

    PYTHONPATH=src OMP_NUM_THREADS=1 python scripts/interop_families.py [--check] [FAMILY ...]

Per family: MLPs found (patched + left), patched, the relative max difference of the logits in
float32 and float64, and the reason for anything left. ``--check`` prints the table without
writing. Offline: configs are built from ``ffnlab.interop.survey.tiny_config``.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time
import warnings

BEGIN = "<!-- interop-families: begin (scripts/interop_families.py writes this table) -->"
END = "<!-- interop-families: end -->"
STATUS = {
    "patched": "patched",
    "partly": "partly",
    "none": "left",
    "config": "config does not build offline",
    "large": "too large at tiny sizes",
    "forward": "tiny model does not run",
    "error": "patch_hf failed",
}


def _num(x: float | None) -> str:
    return "" if x is None else ("0" if x == 0 else f"{x:.1e}")


def table(reports) -> str:
    counts = {}
    for r in reports:
        counts[r.status] = counts.get(r.status, 0) + 1
    built = sum(counts.get(k, 0) for k in ("patched", "partly", "none"))
    patched = counts.get("patched", 0) + counts.get("partly", 0)
    import transformers

    lines = [
        f"transformers {transformers.__version__}: {len(reports)} causal-LM families; "
        f"{built} build and run offline at tiny sizes, {patched} of them patched "
        f"({counts.get('partly', 0)} partly), {counts.get('none', 0)} left.",
        "",
        "| family | status | MLPs found | patched | logits Δ float32 | logits Δ float64 | why left |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        why = r.reason or (r.left[0].split(" (", 1)[-1].rstrip(")") if r.left else "")
        why = why.replace("|", "\\|")
        lines.append(
            f"| {r.family} | {STATUS[r.status]} | {r.found} | {r.patched} | "
            f"{_num(r.diff32)} | {_num(r.diff64)} | {why} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("families", nargs="*", help="model types (default: all)")
    parser.add_argument("--check", action="store_true", help="print the table, write nothing")
    parser.add_argument(
        "--doc", default=str(pathlib.Path(__file__).parents[1] / "docs" / "interop.md")
    )
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    import transformers

    from ffnlab.interop.survey import family_names, survey_family

    transformers.logging.set_verbosity_error()
    reports = []
    start = time.perf_counter()
    for name in args.families or family_names():
        reports.append(survey_family(name))
        print(f"{name}: {reports[-1].status}", file=sys.stderr, flush=True)
    text = table(reports)
    print(f"{len(reports)} families in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    if args.check or args.families:
        print(text)
        return 0
    doc = pathlib.Path(args.doc)
    body = doc.read_text()
    head, rest = body.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    doc.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

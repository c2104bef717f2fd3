"""Run the benchmark suites and write their results: a script of the checkout (the suites and
their baselines live here, not in the installed package); ``make bench`` runs it in full.

    python benchmarks/bench.py [--suite loss|mining|train|all] [--quick] [--out DIR]

Each suite writes ``<out>/<suite>-<machine>.json`` (every figure with its repeats: min, median,
max; the machine: CPU, cores, memory, GPU, versions; the load average before and after), the
same as a markdown table (``.md``) and its figures (``<out>/figures/*.png``). The benchmark
tables (docs/benchmarks.md) are generated from the JSON files in ``benchmarks/results`` by
``benchmarks/report.py``.
Without ``--out``, a full run writes to ``benchmarks/results`` and a ``--quick`` smoke run to
``benchmarks/results/quick`` (never into docs/benchmarks.md).

lightly (for its ``NTXentLoss`` and MoCo helpers) is looked for in ``--lightly-python``, then
``DIST_CONTRAST_LIGHTLY_PYTHON``, then the tool venv ``.venv-lightly`` that ``make bench``
creates, then this interpreter; when none has it, the result says so and why.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dist_contrast.errors import RunFailed, UserError  # noqa: E402
from results import (  # noqa: E402
    RESULTS,
    ROOT,
    SUITES,
    SuiteResult,
    describe_machine,
    machine_slug,
    result_path,
    run_python,
    write_json,
)

LIGHTLY_CHECK = ("import lightly, lightly.loss, lightly.models.utils; "
                 "print(lightly.__version__)")


def find_lightly(explicit: str | None = None) -> tuple[str | None, str]:
    """An interpreter that imports lightly's loss and model helpers, and lightly's version;
    or None and why not."""
    candidates = [explicit, os.environ.get("DIST_CONTRAST_LIGHTLY_PYTHON"),
                  str(ROOT / ".venv-lightly" / "bin" / "python"), sys.executable]
    reasons = []
    for python in dict.fromkeys(c for c in candidates if c):
        if not Path(python).is_file():
            continue
        done = run_python(python, ["-c", LIGHTLY_CHECK], timeout=300)
        if done.returncode == 0:
            return python, done.stdout.strip().splitlines()[-1]
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        reasons.append(f"{python}: {last}")
    return None, ("no interpreter with lightly (`make bench` makes .venv-lightly; "
                  + "; ".join(reasons) + ")")


def run_suite(suite: str, quick: bool, out: Path, lightly: tuple[str | None, str]) -> Path:
    """Run one suite; write its JSON, markdown and figures; return the JSON's path."""
    import report
    from figures import write_figures

    python, about = lightly
    machine = describe_machine(lightly=about if python else None)
    result = SuiteResult.start(suite, quick, machine)
    if suite == "loss":
        import suite_loss

        suite_loss.run(result, quick, python, about)
    elif suite == "mining":
        import suite_mining

        suite_mining.run(result, quick)
    else:
        import suite_train

        try:
            suite_train.run(result, quick, python, about)
        except suite_train.BenchError as exc:
            raise RunFailed(f"bench suite train: {exc}") from None
    if not machine.get("gpu"):
        result.notes.append("no GPU on this machine: the GPU runs (bf16, the FAISS GPU index, "
                            "the tiled loss at B = 32,768, N = 1,048,576) were not made here")
    data = result.to_json()
    path = result_path(out, suite, machine)
    write_json(path, data)
    data["_file"] = path.name
    slug = machine_slug(machine)
    write_figures(data, out / report.FIGURES, slug)
    markdown = path.with_suffix(".md")
    markdown.write_text(f"# Suite `{suite}`\n\n" + report.suite_markdown(data))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/bench.py",
                                     description=__doc__.split("\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run(args.suite, args.quick, args.out, args.lightly_python)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--suite", choices=(*SUITES, "all"), default="all",
                        help="which suite to run (default all)")
    parser.add_argument("--quick", action="store_true",
                        help="a small smoke run of each suite (minutes; numbers only indicative)")
    parser.add_argument("--out", metavar="DIR",
                        help="where to write (default benchmarks/results, or "
                             "benchmarks/results/quick with --quick)")
    parser.add_argument("--lightly-python", metavar="PYTHON",
                        help="an interpreter that has lightly (default: .venv-lightly if present)")


def run(suite: str, quick: bool, out: str | None, lightly_python: str | None = None) -> int:
    folder = Path(out) if out else (RESULTS / "quick" if quick else RESULTS)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cannot write benchmark results to {folder} ({exc.strerror}); "
                        "pass a writable --out DIR") from None
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    lightly = find_lightly(lightly_python)
    print(f"lightly: {lightly[1]}" if lightly[0] else f"lightly: unavailable: {lightly[1]}",
          flush=True)
    for name in SUITES if suite == "all" else (suite,):
        started = time.time()
        path = run_suite(name, quick, folder, lightly)
        print(f"suite {name}: {time.time() - started:.0f} s; wrote {path} (+ .md, figures/)",
              flush=True)
    if not quick and folder.resolve() == RESULTS.resolve():
        print("update docs/benchmarks.md with: python benchmarks/report.py --write")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except UserError as exc:
        print(f"bench.py: error: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
    except KeyboardInterrupt:
        print("bench.py: interrupted; files of finished suites are kept",
              file=sys.stderr)
        raise SystemExit(130) from None

"""Execute the lesson notebooks in a run profile and write benchmarks/RESULTS.md.

    python benchmarks/run.py --profile cpu                 # every lesson in notebooks/
    python benchmarks/run.py --profile cpu 00 03           # chapters 00 and 03 only
    python benchmarks/run.py --report-only                 # rewrite RESULTS.md from saved results

Records go to benchmarks/results/<profile>/ (the lessons save their scorecards there too; after a
successful run of a chapter, its records older than the run are removed: rows the lesson no longer
makes; a failed run keeps them);
executed copies of the notebooks, with outputs, to benchmarks/executed/<profile>/ (not committed).
Run it on an otherwise idle machine: the timings are wall-clock.
"""

import argparse
import datetime as dt
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from course_lib.benchmark import drop_records_before, run_notebook, save_runs, write_results_markdown  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("chapters", nargs="*", help="chapter numbers or notebook names (default: all)")
    parser.add_argument("--profile", default="cpu", choices=["smoke", "cpu", "gpu"])
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    results = ROOT / "benchmarks" / "results"
    failed = 0
    if not args.report_only:
        notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
        if args.chapters:
            notebooks = [p for p in notebooks if any(p.stem.startswith(c) for c in args.chapters)]
            if not notebooks:
                parser.error(f"no lesson notebook matches {args.chapters}")
        for path in notebooks:
            print(f"running {path.name} in profile {args.profile} ...", flush=True)
            started = dt.datetime.now().isoformat(timespec="seconds")
            run = run_notebook(path, args.profile, args.timeout, ROOT / "benchmarks" / "executed" / args.profile)
            status = "ok" if run.ok else f"FAILED: {run.error}"
            print(f"  {status}; {run.wall_s / 60:.1f} min; kernel peak {run.peak_rss_bytes / 1e9:.2f} GB", flush=True)
            save_runs([run], results)
            if run.ok:
                dropped = drop_records_before(results, args.profile, path.stem, started)
                if dropped:
                    print(f"  removed older records the lesson no longer writes: {', '.join(dropped)}", flush=True)
            failed += not run.ok
    report = write_results_markdown(results, ROOT / "benchmarks" / "RESULTS.md")
    print(f"wrote {report.relative_to(ROOT)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Start-up cost of the commands that run no pipeline (no Apache Beam to import).

    .venv/bin/python -m benchmarks.startup [--pages 100] [--repeat 5]

- ``build-m3w --help``: wall time of the whole command (fresh interpreter each time);
- ``build-m3w extract`` on ``--pages`` real pages (article_benchmark, ``.html.gz``): CPU time of
  the whole process tree (the command and its extraction process: user + system, from
  ``RUSAGE_CHILDREN``), against the same command on one small page (its start-up and exit: what
  does not grow with the pages). Start-up share = that cost / the 100-page run's;
- for scale, a bare ``import apache_beam`` in a fresh interpreter (CPU of the tree).

Medians over ``--repeat`` runs, alternated so a load swing hits all alike.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAGE = "<html><head><title>T</title></head><body><p>One paragraph of text, long enough to count.</p></body></html>"


def _tree_cpu(cmd: list[str]) -> tuple[float, float]:
    """(CPU seconds of the command's whole process tree, wall seconds)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, cwd=REPO)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), wall


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "extraction" / "article_benchmark" / "html"))
    ap.add_argument("--pages", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    pages = sorted(str(p) for p in Path(args.data).glob("*.html.gz"))[: args.pages]
    exe = shutil.which("build-m3w", path=str(Path(sys.executable).parent)) or "build-m3w"
    with tempfile.TemporaryDirectory() as tmp:
        small = os.path.join(tmp, "page.html")
        Path(small).write_text(PAGE)
        runs: dict[str, list[tuple[float, float]]] = {"help": [], "one": [], "many": [], "beam": []}
        for _ in range(args.repeat):
            runs["help"].append(_tree_cpu([exe, "--help"]))
            runs["one"].append(_tree_cpu([exe, "extract", small]))
            runs["many"].append(_tree_cpu([exe, "extract", *pages]))
            runs["beam"].append(_tree_cpu([sys.executable, "-c", "import apache_beam"]))
    med = {k: (statistics.median(c for c, _ in v), statistics.median(w for _, w in v)) for k, v in runs.items()}
    print(f"load average {os.getloadavg()[0]:.1f}; medians of {args.repeat} runs")
    print("| command | CPU (process tree) | wall |")
    print("| --- | ---: | ---: |")
    print(f"| `build-m3w --help` | {med['help'][0]:.3f} s | {med['help'][1]:.3f} s |")
    print(f"| `build-m3w extract` on 1 small page (start-up and exit) | {med['one'][0]:.3f} s | {med['one'][1]:.3f} s |")
    print(f"| `build-m3w extract` on {len(pages)} pages | {med['many'][0]:.3f} s | {med['many'][1]:.3f} s |")
    print(f"| `python -c 'import apache_beam'` (for scale) | {med['beam'][0]:.3f} s | {med['beam'][1]:.3f} s |")
    shares = sorted(o[0] / m[0] for o, m in zip(runs["one"], runs["many"]))
    print(
        f"\nstart-up share of `build-m3w extract` on {len(pages)} pages (CPU): median {statistics.median(shares):.1%} "
        f"(range {shares[0]:.1%}-{shares[-1]:.1%})"
    )


if __name__ == "__main__":
    main()

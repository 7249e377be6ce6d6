"""Where the test suite's time goes, per test file, from the log ``COORD_TEST_CPU_LOG`` makes.

    CI=true COORD_TEST_CPU_LOG=/tmp/suite.tsv bash shell/test.sh
    python bench/suite_times.py /tmp/suite.tsv --wall-s 1130 --top 20

Per file: CPU seconds (the test process and the subprocesses it waited for: ``swift``, torchrun, vLLM), wall
seconds, tests; per worker: busy seconds and when its last test ended. The files with the most CPU seconds are the
ones ``tests/conftest.py`` ``SLOWEST_FIRST`` starts first. Markdown on stdout, with the machine.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_name  # noqa: E402


def read_log(path: str):
    """Rows ``(nodeid, worker, start, wall_s, cpu_s)`` of a ``COORD_TEST_CPU_LOG`` file."""
    rows = []
    for line in Path(path).read_text().splitlines():
        nodeid, worker, start, wall, cpu = line.split("\t")
        rows.append((nodeid, worker, float(start), float(wall), float(cpu)))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("log")
    p.add_argument("--wall-s", type=float, default=None, help="the run's pytest wall time, for the utilisation line")
    p.add_argument("--top", type=int, default=20)
    a = p.parse_args(argv)
    rows = read_log(a.log)
    # A test of the vLLM environment runs inside another test's pytest (its CPU is counted by that test).
    outer = [r for r in rows if not r[0].startswith("tests/vllm_env_")]
    files = collections.defaultdict(lambda: [0.0, 0.0, 0])
    for nodeid, _, _, wall, cpu in outer:
        f = files[nodeid.split("::")[0]]
        f[0] += cpu
        f[1] += wall
        f[2] += 1
    workers = collections.defaultdict(lambda: [0.0, 0.0])
    t0 = min(r[2] for r in outer)
    for _, worker, start, wall, _ in outer:
        w = workers[worker]
        w[0] += wall
        w[1] = max(w[1], start + wall - t0)
    total_cpu = sum(f[0] for f in files.values())
    print(f"Machine: {cpu_name()}; {len(outer)} tests in {len(files)} files.\n")
    print("| file | CPU s | wall s | tests |\n|---|---:|---:|---:|")
    for name, (cpu, wall, n) in sorted(files.items(), key=lambda kv: -kv[1][0])[:a.top]:
        print(f"| {name} | {cpu:.0f} | {wall:.0f} | {n} |")
    rest = sorted(files.values(), key=lambda v: -v[0])[a.top:]
    if rest:
        print(f"| {len(rest)} other files | {sum(v[0] for v in rest):.0f} | {sum(v[1] for v in rest):.0f} | "
              f"{sum(v[2] for v in rest)} |")
    print(f"| **all** | **{total_cpu:.0f}** | | **{len(outer)}** |\n")
    for worker, (busy, end) in sorted(workers.items()):
        print(f"- worker {worker}: busy {busy:.0f} s, last test ended {end:.0f} s after the first began")
    if a.wall_s:
        cores = os.cpu_count() or 1
        print(f"- CPU seconds / ({cores} cores x {a.wall_s:.0f} s of pytest) = "
              f"{total_cpu / (cores * a.wall_s):.0%} of the machine inside tests")
    return 0


if __name__ == "__main__":
    sys.exit(main())

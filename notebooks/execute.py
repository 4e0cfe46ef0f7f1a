"""Execute the tutorial notebooks top to bottom, in place, with their outputs saved, and record
each one's wall time and the machine's load in RESULTS.md (the table between the two markers of
its "The notebooks' saved runs" section).

    python notebooks/execute.py                     # every notebook, in order
    python notebooks/execute.py 04 06               # the notebooks whose names start so
    python notebooks/execute.py --machine XEON-AMX  # the machine's name in the table

Each notebook runs as a reader runs it: working folder notebooks/, its data in data/ and its runs
in out/ at the repository root, BGPT_SMOKE unset, in a kernel of this Python. The load is the
1-minute load average (/proc/loadavg), read before the notebook starts and every 20 s while it
runs; a notebook uses both cores of a 2-core machine, so a load near 2 means nothing else ran.
A notebook that fails keeps the outputs of the cells that ran and its error; the others still
run, and the script exits with 1.
"""

import argparse
import datetime
import os
import platform
import re
import sys
import threading
import time
from pathlib import Path

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent / "RESULTS.md"
BEGIN, END = "<!-- notebook runs: written by notebooks/execute.py -->", "<!-- end of notebook runs -->"
HEADER = ("| notebook | executed | machine | wall | load (1 min): before, mean and max while running |\n"
          "|---|---|---|---|---|")
SAMPLE_S = 20  # seconds between two load readings


def load_1min():
    """The 1-minute load average, or None where /proc/loadavg does not exist (not Linux)."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except OSError:
        return None


class LoadSampler(threading.Thread):
    """Reads the 1-minute load every SAMPLE_S seconds until stopped."""

    def __init__(self):
        super().__init__(daemon=True)
        self.readings, self.done = [], threading.Event()

    def run(self):
        while not self.done.wait(SAMPLE_S):
            self.readings.append(load_1min())


def execute(path):
    """Run the notebook at path in place and save it; return (seconds, error line or "")."""
    nb = nbformat.read(path, as_version=4)
    env = {k: v for k, v in os.environ.items() if k not in ("BGPT_SMOKE", "BGPT_DATA", "BGPT_OUT")}
    specs = KernelSpecManager(kernel_dirs=[])  # the built-in python3 spec: this interpreter
    km = KernelManager(kernel_name="python3", kernel_spec_manager=specs)
    client = NotebookClient(nb, km=km, timeout=None, startup_timeout=120,
                            resources={"metadata": {"path": str(HERE)}})
    t0, error = time.time(), ""
    try:
        client.execute(env=env)
    except CellExecutionError as e:
        error = str(e).strip().splitlines()[-1][:200]
    seconds = time.time() - t0
    nbformat.write(nb, path)
    return seconds, error


def row(name, date, machine, seconds, before, readings, error=""):
    """One line of the table."""
    wall = f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"
    during = [r for r in readings if r is not None]
    load = ("not read" if before is None else f"{before:.2f}; " + (
        f"{sum(during) / len(during):.2f} and {max(during):.2f}" if during else "ran under 20 s"))
    return f"| `{name}` | {date} | {machine} | {wall}{' (FAILED: ' + error + ')' if error else ''} | {load} |"


def update_table(text, line):
    """text (RESULTS.md) with line replacing the notebook's row in the table between the
    markers, or added in name order; the markers and the header are added when missing."""
    name = re.match(r"\| `([^`]+)`", line).group(1)
    if BEGIN not in text:
        text = text.rstrip("\n") + f"\n\n{BEGIN}\n{HEADER}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    table, tail = rest.split(END, 1)
    rows = {re.match(r"\| `([^`]+)`", r).group(1): r
            for r in table.strip().splitlines() if r.startswith("| `")}
    rows[name] = line
    body = "\n".join([HEADER] + [rows[k] for k in sorted(rows)])
    return f"{head}{BEGIN}\n{body}\n{END}{tail}"


def main(argv=None):
    parser = argparse.ArgumentParser(description="Execute the tutorial notebooks in place.")
    parser.add_argument("names", nargs="*", help="run only notebooks whose names start so (e.g. 04)")
    parser.add_argument("--machine", default=platform.processor() or platform.machine(),
                        help="the machine's name in RESULTS.md's table")
    args = parser.parse_args(argv)
    notebooks = [p for p in sorted(HERE.glob("*.ipynb"))
                 if not args.names or any(p.name.startswith(n) for n in args.names)]
    if not notebooks:
        print(f"execute.py: no notebook in {HERE} starts with {' or '.join(args.names)}", file=sys.stderr)
        return 2
    failed = 0
    for path in notebooks:
        before, sampler = load_1min(), LoadSampler()
        sampler.start()
        print(f"{path.name}: running (load {before})", flush=True)
        seconds, error = execute(path)
        sampler.done.set()
        line = row(path.stem, datetime.date.today().isoformat(), args.machine, seconds, before,
                   sampler.readings, error)
        RESULTS.write_text(update_table(RESULTS.read_text(), line))
        print(line, flush=True)
        failed += bool(error)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

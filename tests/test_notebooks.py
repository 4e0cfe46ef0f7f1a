"""Every tutorial notebook runs top to bottom in smoke mode (BGPT_SMOKE=1: tiny data, few steps,
the same code path), in a kernel of the Python running pytest, and fails with the cell's error.

The notebook is executed as an in-memory copy: its committed outputs (the full run's plots and
numbers that readers see) are never overwritten by the smoke run's. Its data sets and runs go to
a temporary folder (BGPT_DATA, BGPT_OUT): the checkout's data/ and out/ stay as they were.
"""

import re
import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
pytestmark = pytest.mark.slow  # a notebook takes seconds to minutes even in smoke mode
CELL_TIMEOUT = 600  # seconds per cell; a smoke-mode notebook takes well under 2 minutes in all


def run_notebook(nb, cwd):
    """Execute nb in place (in memory) with cwd as the working directory; return it.

    The kernel is ipykernel's built-in "python3" spec, whose command is this interpreter
    (sys.executable): kernel_dirs=[] makes jupyter_client ignore any kernel.json installed
    for the user or system-wide, which could point at another Python without torch."""
    specs = KernelSpecManager(kernel_dirs=[])
    km = KernelManager(kernel_name="python3", kernel_spec_manager=specs)
    client = NotebookClient(nb, km=km, timeout=CELL_TIMEOUT, startup_timeout=120,
                            resources={"metadata": {"path": str(cwd)}})
    return client.execute()


def listing(folder):
    """(path, size, mtime) of folder and of everything under it; None when it does not exist."""
    if not folder.exists():
        return None
    return {(str(p.relative_to(REPO)), p.lstat().st_size, p.lstat().st_mtime_ns)
            for p in [folder, *folder.rglob("*")]}


def test_kernel_runs_in_this_environment(tmp_path):
    """The notebooks see the packages pytest sees (same sys.prefix: the same venv)."""
    cell = nbformat.v4.new_code_cell("import sys; print(sys.prefix)")
    nb = nbformat.v4.new_notebook(cells=[cell])
    out = run_notebook(nb, tmp_path).cells[0].outputs[0]["text"].strip()
    assert out == sys.prefix


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_smoke_mode(path, monkeypatch, tmp_path):
    if path.stem == "07_attention":  # flash.py's Triton kernels, through Triton's interpreter
        pytest.importorskip("triton", reason="notebook 07 needs triton (requirements-dev.txt "
                                             "installs it on Linux)")
    # The kernel inherits this process's environment.
    monkeypatch.setenv("BGPT_SMOKE", "1")
    monkeypatch.setenv("BGPT_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("BGPT_OUT", str(tmp_path / "out"))
    # Downloads a full run already made (notebook 02's PyPI package) are linked, not fetched again:
    # the builders only read a cached file, and the test stays offline where the cache exists.
    cache = tmp_path / "data" / "_downloads"
    for f in (REPO / "data" / "_downloads").glob("*"):
        cache.mkdir(parents=True, exist_ok=True)
        (cache / f.name).symlink_to(f)
    before = {d: listing(REPO / d) for d in ("data", "out")}
    nb = nbformat.read(path, as_version=4)
    error = None
    try:
        run_notebook(nb, NOTEBOOK_DIR)  # cwd notebooks/, as when a reader opens the notebook
    except CellExecutionError as e:  # the cell's source and traceback, without terminal colours
        error = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    if error:  # outside except: no chained traceback
        pytest.fail(f"{path.name} failed in smoke mode:\n{error}", pytrace=False)
    for d, seen in before.items():
        now = listing(REPO / d)
        changed = sorted((seen or set()) ^ (now or set()))[:5]  # (path, size, mtime), either side
        assert now == seen, f"the smoke run wrote into the checkout's {d}/: {changed}"

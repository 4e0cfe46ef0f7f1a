"""Every tutorial notebook runs top to bottom in smoke mode (BGPT_SMOKE=1: tiny data, few steps,
the same code path), in a kernel of the Python running pytest, and fails with the cell's error.

The notebook is executed as an in-memory copy: its committed outputs (the full run's plots and
numbers that readers see) are never overwritten by the smoke run's.
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

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT = 600  # seconds per cell; a smoke-mode notebook should take well under 2 minutes in all


def run_notebook(nb, cwd):
    """Execute nb in place (in memory) with cwd as the working directory; return it.

    The kernel is ipykernel's built-in "python3" spec, whose command is this interpreter
    (sys.executable): kernel_dirs=[] makes jupyter_client ignore any kernel.json installed
    for the user or system-wide, which could point at another Python without torch."""
    km = KernelManager(kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[]))
    client = NotebookClient(nb, km=km, timeout=CELL_TIMEOUT, startup_timeout=120,
                            resources={"metadata": {"path": str(cwd)}})
    return client.execute()


def test_kernel_runs_in_this_environment(tmp_path):
    """The notebooks see the packages pytest sees (same sys.prefix: the same venv)."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import sys; print(sys.prefix)")])
    out = run_notebook(nb, tmp_path).cells[0].outputs[0]["text"].strip()
    assert out == sys.prefix


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_smoke_mode(path, monkeypatch):
    monkeypatch.setenv("BGPT_SMOKE", "1")  # the kernel inherits this process's environment
    nb = nbformat.read(path, as_version=4)
    try:
        run_notebook(nb, NOTEBOOK_DIR)  # cwd notebooks/, as when a reader opens the notebook
        return
    except CellExecutionError as e:  # the cell's source and traceback, without the terminal colours
        error = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    pytest.fail(f"{path.name} failed in smoke mode:\n{error}", pytrace=False)  # outside except: no chained traceback

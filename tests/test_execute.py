"""notebooks/execute.py: the script that re-executes the notebooks and records each run in
RESULTS.md's table."""

import nbformat
import pytest

from notebooks import execute


def test_a_row_replaces_its_notebooks_row_and_keeps_the_rest():
    text = "# Results\n\nintro\n"
    first = execute.row("02_text", "2026-01-01", "M", 450.0, 1.5, [2.0, 2.5])
    assert first == "| `02_text` | 2026-01-01 | M | 7.5 min | 1.50; 2.25 and 2.50 |"
    text = execute.update_table(text, first)
    text = execute.update_table(text, execute.row("01_bytes", "2026-01-01", "M", 30, 0.5, []))
    text = execute.update_table(text + "after\n", execute.row("02_text", "2026-01-02", "M", 61, None, []))
    assert text.startswith("# Results\n\nintro\n")
    assert text.endswith(execute.END + "\nafter\n")  # what follows the table stays
    table = text.split(execute.BEGIN)[1].split(execute.END)[0].strip().splitlines()
    assert table[:2] == execute.HEADER.splitlines()
    assert table[2:] == ["| `01_bytes` | 2026-01-01 | M | 30 s | 0.50; ran under 20 s |",
                         "| `02_text` | 2026-01-02 | M | 1.0 min | not read |"]


def test_a_failed_notebook_is_marked_so():
    line = execute.row("05_music", "2026-01-01", "M", 5, 1.0, [], error="ValueError: bad")
    assert "5 s (FAILED: ValueError: bad)" in line


@pytest.mark.slow  # starts a kernel: seconds
def test_execute_runs_a_notebook_in_place_without_smoke_mode(tmp_path, monkeypatch):
    monkeypatch.setenv("BGPT_SMOKE", "1")  # a reader's run: the script must not pass it on
    path = tmp_path / "nb.ipynb"
    cells = [nbformat.v4.new_code_cell("import os; print(os.environ.get('BGPT_SMOKE'), os.getcwd())"),
             nbformat.v4.new_code_cell("1 / 0"), nbformat.v4.new_code_cell("print('not reached')")]
    nbformat.write(nbformat.v4.new_notebook(cells=cells), path)
    seconds, error = execute.execute(path)
    assert "ZeroDivisionError" in error and seconds > 0
    saved = nbformat.read(path, as_version=4).cells
    assert saved[0].outputs[0]["text"].strip() == f"None {execute.HERE}"
    assert saved[1].outputs[0]["ename"] == "ZeroDivisionError" and not saved[2].outputs

"""The teaching notebooks run top to bottom; the asserts inside them are the checks."""

import pathlib
import sys

import nbclient
import nbformat
import pytest

# ipykernel and matplotlib come with the dev extra: a missing one must fail
# the suite, not skip the notebooks silently.

NOTEBOOKS_DIR = pathlib.Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))


def test_notebooks_exist():
  assert len(NOTEBOOKS) >= 3, f"expected the teaching notebooks in {NOTEBOOKS_DIR}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path):
  nb = nbformat.read(path, as_version=4)
  # First cell (added here only): which Python runs the kernel. The "python3"
  # kernelspec must resolve to this interpreter's environment (jupyter_client
  # substitutes sys.executable for a bare "python"), not to another install.
  nb.cells.insert(0, nbformat.v4.new_code_cell("import sys; print(sys.prefix)"))
  client = nbclient.NotebookClient(
    nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS_DIR)}}
  )
  client.execute()  # a failing cell (an assert in the notebook) raises CellExecutionError
  kernel_prefix = "".join(o.get("text", "") for o in nb.cells[0].outputs).strip()
  assert kernel_prefix == sys.prefix, (
    f"the python3 kernel ran in {kernel_prefix!r}, not in this environment {sys.prefix!r}"
  )

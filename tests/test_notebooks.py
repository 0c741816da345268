"""The notebooks in notebooks/ run top to bottom, and are committed without outputs.

Each notebook is executed in a fresh ``python3`` kernel whose working directory is the
repository root (the notebooks also find the root themselves, so ``import surgery`` works
from anywhere inside the repository). A cell that raises fails the test. If no ``python3``
kernelspec is installed, one is installed for the current user from ``ipykernel``.
"""
import pathlib

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
EXPECTED = ["01_surgery_plain.ipynb", "02_surgery_pw_dw_pw.ipynb",
            "03_surgery_mobilenetv2.ipynb", "04_keras3_jax.ipynb"]


def _ensure_kernelspec() -> None:
    from jupyter_client.kernelspec import KernelSpecManager

    if "python3" not in KernelSpecManager().find_kernel_specs():
        import ipykernel.kernelspec

        ipykernel.kernelspec.install(user=True)


def test_all_notebooks_present():
    assert [p.name for p in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"
             and (c.get("outputs") or c.get("execution_count") is not None)]
    assert not dirty, f"{path.name}: code cells {dirty} have outputs; clear them before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path):
    _ensure_kernelspec()
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(ROOT)}})
    client.execute()  # raises CellExecutionError naming the failing cell and its traceback

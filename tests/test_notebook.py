"""The quickstart notebook runs end to end (offline, tiny models), so it cannot rot."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_executes(tmp_path, monkeypatch):
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))  # the kernel's temp files (the notebook writes there)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "[(320, 160), (320, 160)] [0, 1]" in outputs
    assert "rain [1, 2]" in outputs and "golden-hour [1, 2]" in outputs
    assert "source vs itself: {'absrel': 0.0, 'delta1': 1.0, 'edge_f1': 1.0}" in outputs

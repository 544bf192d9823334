"""The analysis notebook runs on a finished (small) run."""

import os
import pathlib

import nbformat
from nbclient import NotebookClient

import lottery

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_tickets_notebook_executes(tiny_config, tmp_path, monkeypatch):
  workdir = tmp_path / "run"
  lottery.run(tiny_config(**{"controls_every": 2}), workdir,
              log=lambda _: None)
  nb = nbformat.read(ROOT / "notebooks" / "tickets.ipynb", as_version=4)
  monkeypatch.setenv("LOTTERY_WORKDIR", str(workdir))
  monkeypatch.setenv("MPLBACKEND", "Agg")
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
      [str(ROOT), os.environ.get("PYTHONPATH", "")]))
  NotebookClient(nb, timeout=300, kernel_name="python3",
                 resources={"metadata": {"path": str(tmp_path)}}).execute()
  text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                 for o in c.outputs)
  assert "3 finished rounds" in text
  # Round 1 has no controls (controls_every=2); round 2 has both.
  assert "    1   0.5000       " in text and "           -" in text
  assert "round 2 density 0.25" in text
  assert (workdir / "accuracy_vs_density.png").stat().st_size > 1000
  assert (workdir / "learning_curves.png").stat().st_size > 1000

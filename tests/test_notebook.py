"""The analysis notebook runs, as a researcher meets it, on runs of every shape.

Each case executes notebooks/tickets.ipynb with nbclient and checks what it
wrote beside its figures (tables.json, the numbers it plotted) against
`lottery.records` and the tickets themselves.
"""

import json
import pathlib
import shutil

import numpy as np
import pytest

import lottery
from lottery import analysis

from conftest import execute_notebook
from conftest import run_until_round
from conftest import tiny

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Second tier: every test executes a notebook (a Jupyter kernel per test).
pytestmark = pytest.mark.slow


def _execute(workdir, monkeypatch, tmp_path, images=0) -> str:
  return execute_notebook("tickets.ipynb", workdir, monkeypatch, tmp_path,
                          images)


def _tables(workdir) -> dict:
  return json.loads((pathlib.Path(workdir) / "analysis" /
                     "tables.json").read_text())


def _check_accuracy(tables, records):
  """One row per record, its test accuracy exactly, one replicate."""
  rows = {(r["round"], r["kind"]): r for r in tables["test_accuracy"]}
  assert sorted(rows) == sorted((r["round"], r["kind"]) for r in records)
  for r in records:
    row = rows[r["round"], r["kind"]]
    assert (row["mean"], row["std"], row["n"], row["density"]) == (
        r["test_accuracy"], 0.0, 1, r["density"])


def _check_masks(tables, workdir, rounds):
  """Tiny MLP, layerwise at 0.5: each layer keeps exactly 0.5**round, and
  each round keeps a subset of the previous round's weights."""
  assert tables["layer_densities"] == [
      {"round": r, "density": 0.5 ** r,
       "layers": {"fc1/kernel": 0.5 ** r, "out/kernel": 0.5 ** r}}
      for r in rounds]
  for row in tables["mask_overlap"]:
    assert (row["kept_from_previous"], row["jaccard_previous"]) == (1.0, 0.5)
  assert [r["round"] for r in tables["mask_overlap"]] == list(rounds[1:])
  hist = lottery.load_ticket(workdir, 0).metrics["history"]
  assert tables["learning_curves"]["ticket"]["0"] == {
      "step": [h["step"] for h in hist],
      "mean": [h["accuracy"] for h in hist], "std": [0.0] * len(hist)}


@pytest.fixture(scope="module")
def finished_run(npz_path, tmp_path_factory):
  """Finished, with controls on round 2 only and a validation split."""
  workdir = tmp_path_factory.mktemp("finished") / "run"
  lottery.run(tiny(npz_path, **{"controls_every": 2,
                                "data.validation_size": 32}), workdir,
              log=lambda _: None)
  return workdir


def test_finished_run_with_controls_and_validation(finished_run, monkeypatch,
                                                    tmp_path):
  # Its five figures, drawn inline: accuracy against density, per-layer
  # densities, mask overlap, learning curves, early stopping.
  text = _execute(finished_run, monkeypatch, tmp_path, images=5)
  assert f"3 of 3 rounds finished in {finished_run} (run finished)" in text
  assert "replicates: 1; validation split: 32 examples" in text
  records = lottery.records(finished_run)
  assert {(r["round"], r["kind"]) for r in records} == {
      (0, "ticket"), (1, "ticket"), (2, "ticket"), (2, "reinit"),
      (2, "random_prune")}
  tables = _tables(finished_run)
  _check_accuracy(tables, records)
  _check_masks(tables, finished_run, [0, 1, 2])
  # Round 1 has no controls; round 2 compares the ticket with random_prune.
  ov = {r["round"]: r for r in tables["mask_overlap"]}
  assert "overlap_random_prune" not in ov[1]
  t = lottery.load_ticket(finished_run, 2)
  rand = lottery.load_ticket(finished_run, 2, "random_prune")
  both = sum(int((np.asarray(t.mask[k]["kernel"]) &
                  np.asarray(rand.mask[k]["kernel"])).sum())
             for k in ("fc1", "out"))
  assert ov[2]["overlap_random_prune"] == both / sum(
      int(np.asarray(t.mask[k]["kernel"]).sum()) for k in ("fc1", "out"))
  # Early stopping: the step of minimum validation loss of every record.
  early = {(r["round"], r["kind"]): r["mean"]
           for r in tables["early_stop_step"]}
  assert early == {(r["round"], r["kind"]): r["early_stop_step"]
                   for r in records}
  assert tables["learning_curves"]["round"] == 2
  assert sorted(tables["learning_curves"]["kinds"]) == [
      "random_prune", "reinit", "ticket"]
  for name in ("accuracy_vs_density", "layer_densities", "mask_overlap",
               "learning_curves", "early_stopping"):
    assert (finished_run / "analysis" / f"{name}.png").stat().st_size > 1000


def test_unfinished_run(tiny_config, monkeypatch, tmp_path):
  """Stopped after round 1 of 2 (controls on every round, no validation)."""
  workdir = tmp_path / "run"
  run_until_round(tiny_config(), workdir, 1)
  text = _execute(workdir, monkeypatch, tmp_path)
  assert f"2 of 3 rounds finished in {workdir} (run in flight or stopped)" \
      in text
  assert "no early-stopping plot: the run has no validation split " \
      "(data.validation_size = 0)" in text
  records = lottery.records(workdir)
  tables = _tables(workdir)
  _check_accuracy(tables, records)
  assert {r["kind"] for r in tables["test_accuracy"] if r["round"] == 1} == {
      "ticket", "reinit", "random_prune"}
  _check_masks(tables, workdir, [0, 1])
  assert "early_stop_step" not in tables
  assert not (workdir / "analysis" / "early_stopping.png").exists()


def test_run_without_controls(tiny_config, monkeypatch, tmp_path):
  workdir = tmp_path / "run"
  lottery.run(tiny_config(controls=()), workdir, log=lambda _: None)
  text = _execute(workdir, monkeypatch, tmp_path)
  assert "kinds: ticket; replicates: 1" in text
  tables = _tables(workdir)
  records = lottery.records(workdir)
  assert [r["kind"] for r in records] == ["ticket"] * 3
  _check_accuracy(tables, records)
  _check_masks(tables, workdir, [0, 1, 2])
  assert all("overlap_random_prune" not in r for r in tables["mask_overlap"])
  assert tables["learning_curves"]["round"] == 2
  assert list(tables["learning_curves"]["kinds"]) == ["ticket"]


def test_replicates_show_mean_and_std(finished_run, npz_path, monkeypatch,
                                      tmp_path):
  """Two replicates trained together (seeds.num=2): each round's record
  carries test_accuracy_std and `seeds`, its per-replicate records."""
  del finished_run
  workdir = tmp_path / "run"
  lottery.run(tiny(npz_path, **{"controls_every": 2, "seeds.num": 2,
                                "data.validation_size": 32}), workdir,
              log=lambda _: None)
  text = _execute(workdir, monkeypatch, tmp_path)
  assert "3 of 3 rounds finished" in text and "replicates: 2" in text
  assert " ± " in text
  tables = _tables(workdir)
  by_key = {}
  for r in lottery.records(workdir):
    if "seed" in r:
      by_key.setdefault((r["round"], r["kind"]), []).append(r)
  assert len(by_key) == 5 and all(len(v) == 2 for v in by_key.values())
  assert len(tables["test_accuracy"]) == 5
  for row in tables["test_accuracy"]:
    accs = [r["test_accuracy"] for r in by_key[row["round"], row["kind"]]]
    assert (row["n"], row["mean"], row["std"]) == (
        2, float(np.mean(accs)), float(np.std(accs)))
  assert len(tables["mask_overlap"]) == 4  # Rounds 1 and 2, two seeds each.
  assert analysis.table(tables["mask_overlap"], "jaccard_previous",
                        by=("round",))[0]["n"] == 2


@pytest.mark.parametrize("case", ["missing", "no_round_yet"])
def test_not_a_run_prints_one_line(case, finished_run, monkeypatch, tmp_path):
  workdir = tmp_path / "run"
  if case == "no_round_yet":
    workdir.mkdir()
    shutil.copy(finished_run / "config.json", workdir)
  text = _execute(workdir, monkeypatch, tmp_path)
  if case == "no_round_yet":
    assert text == (f"no finished round yet in {workdir}: round 0 (the dense "
                    "network) is still training; run this notebook again "
                    "later\n")
  else:
    assert text == (f"error: workdir: {str(workdir)!r} does not exist; "
                    "set LOTTERY_WORKDIR to the "
                    "--workdir of a run (e.g. python -m experiments.imp "
                    "--workdir=/tmp/lottery_runs/mnist1d) and run again\n")
  assert not (workdir / "analysis").exists()

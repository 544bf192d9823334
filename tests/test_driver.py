"""The one driver and the method plug-ins (lottery.driver, lottery.method):
a new method needs no edit to the driver; random streams keyed by values;
records of several workdirs combine; launchers refuse another method's
recipe; a workdir belongs to one method."""

import io
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

import lottery
from lottery import analysis
from lottery import checkpoint
from lottery import masks
from lottery import method as method_lib
from lottery import rng
from lottery import tickets
from lottery import workdir as workdir_lib
from lottery.progress import Progress

from conftest import ROOT
from conftest import tiny


def _same_tree(a, b) -> bool:
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  return len(la) == len(lb) and all(
      np.asarray(x).dtype == np.asarray(y).dtype and
      np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


@method_lib.register
class _Densities(method_lib.Method):
  """A toy method of ~20 lines: magnitude pruning of the initial weights to
  each density of pai.densities, trained like any ticket."""

  name = "toy_densities"
  fields = ("pai.densities",)

  def grid(self, ctx):
    return [{"target_density": d} for d in ctx.config.pai.densities]

  def directory(self, coords):
    return f"toy/density_{coords['target_density']!r}"

  def start(self, ctx, coords):
    starts = []
    for i in range(ctx.replicates):
      params, model_state = ctx.init(i)
      mask = lottery.prune(ctx.exp.dense_mask,
                           lottery.scores.magnitude(params),
                           1 - coords["target_density"], scope="global")
      starts.append(method_lib.Start(mask, params, model_state))
    return method_lib.GroupStart(starts)


def test_a_new_method_runs_through_the_driver(npz_path, tmp_path):
  c = tiny(npz_path, method="toy_densities", **{"seeds.num": 2,
                                                "pai.densities": (0.5, 0.25)})
  lines = []
  summary = lottery.driver.run(c, tmp_path / "wd", log=lines.append)
  assert summary["finished"]
  assert [(r["target_density"], r["seed"]) for r in summary["runs"]] == [
      (0.5, 0), (0.5, 1), (0.25, 0), (0.25, 1)]
  for r in summary["runs"]:
    assert r["ticket"] == (f"toy/density_{r['target_density']!r}/"
                           f"seed_{r['seed']}")
    t = lottery.load_ticket(tmp_path / "wd", target_density=r[
        "target_density"], seed=r["seed"])
    assert t.metrics["density"] == pytest.approx(r["target_density"],
                                                 abs=0.01)
    # Pruned by magnitude: every kept initial weight is at least as large
    # in |w| as every pruned one (global scope).
    mask, init = (masks.named_leaves(x) for x in (t.mask, t.rewind_params))
    kept, gone = ([np.abs(init[k][np.asarray(m) == keep])
                   for k, m in mask.items() if m is not None]
                  for keep in (True, False))
    assert (np.concatenate([k.ravel() for k in kept]).min() >=
            np.concatenate([g.ravel() for g in gone]).max())
  assert len(lines) == 2  # One line per group.
  # Resumed: loads every group, same summary.
  assert lottery.driver.run(c, tmp_path / "wd") == summary


def test_stream_indices_are_values():
  assert rng.index_value(7) == 7
  assert rng.index_value(True) == 1
  assert rng.index_value(0.1) == rng.index_value(np.float64(0.1))
  assert rng.index_value("snip") != rng.index_value("synflow")
  assert 0 <= rng.index_value(0.003) < 2**31
  with pytest.raises(TypeError, match="index"):
    rng.index_value(None)
  a = rng.stream(0, "pai_score", "snip", 0.1, 0)
  b = rng.stream(0, "pai_score", "snip", 0.03, 0)
  assert not np.array_equal(jax.random.key_data(a), jax.random.key_data(b))


def _pai(npz_path, methods, densities):
  c = tiny(npz_path, method="pai", **{"training.steps": 4,
                                      "training.eval_every": 2,
                                      "training.checkpoint_every": 2})
  c.pai.update(methods=methods, densities=densities,
               checks=("shuffle", "reinit"), dense=False, batch_size=16)
  return c


def test_pai_random_streams_keyed_by_values_not_positions(npz_path,
                                                          tmp_path):
  """Adding a method and a density in front, and reordering, leaves every
  other run bit-identical: its masks, start and trained weights."""
  a = tmp_path / "a"
  b = tmp_path / "b"
  lottery.pai.run(_pai(npz_path, ("random", "snip"), (0.2,)), a)
  lottery.pai.run(_pai(npz_path, ("magnitude", "snip", "random"),
                       (0.5, 0.2)), b)
  recs = [r for r in lottery.records(a) if "method" in r]
  assert len(recs) == 4  # random; snip + 2 checks.
  for r in recs:
    coords = {k: r[k] for k in ("method", "check", "target_density", "seed")}
    ta = lottery.load_ticket(a, **coords)
    tb = lottery.load_ticket(b, **coords)
    for field in ("mask", "rewind_params", "trained_params"):
      assert _same_tree(getattr(ta, field), getattr(tb, field)), (coords,
                                                                  field)


def test_records_of_two_workdirs_combine(npz_path, tmp_path):
  """Two single-seed runs (seeds 0 and 1) are two replicates of each round
  in one table: none is dropped as a duplicate."""
  wds = []
  for s in (0, 1):
    c = tiny(npz_path, **{"pruning.rounds": 1, "training.steps": 4,
                          "training.eval_every": 2, "controls": (),
                          "seeds.init": s, "seeds.data": s})
    wds.append(tmp_path / f"seed{s}")
    lottery.run(c, wds[-1])
  recs = lottery.records(wds[0]) + lottery.records(wds[1])
  assert {r["workdir"] for r in recs} == {str(w.resolve()) for w in wds}
  rows = analysis.table(recs)
  assert [(r["round"], r["kind"], r["n"]) for r in rows] == [
      (0, "ticket", 2), (1, "ticket", 2)]
  accs = [lottery.load_ticket(w, 1).metrics["test_accuracy"] for w in wds]
  assert rows[1]["mean"] == pytest.approx(np.mean(accs))
  assert rows[1]["std"] == pytest.approx(np.std(accs))
  # Runs that differ in more than their seeds, or the same run twice, are
  # not replicates: refused in one line naming what differs.
  other = tmp_path / "longer"
  lottery.run(tiny(npz_path, **{"pruning.rounds": 1, "training.steps": 6,
                                "training.eval_every": 2, "controls": (),
                                "seeds.init": 1, "seeds.data": 1}), other)
  with pytest.raises(lottery.LotteryError, match=(
      r"^records: the runs in .*seed0' and .*longer' differ in more than "
      r"their seeds \(training.steps: 4 -> 6\): they are not replicates")):
    analysis.table(recs + lottery.records(other))
  twice = tmp_path / "again"
  shutil.copytree(wds[0], twice)
  with pytest.raises(lottery.LotteryError, match=r"are the same replicate "
                     r"\(seeds init 0, data 0\), not two"):
    analysis.table(recs + lottery.records(twice))
  # Replicate 1 of a two-replicate run from seeds 0 is the run of seeds 1.
  pair = tmp_path / "pair"
  lottery.run(tiny(npz_path, **{"pruning.rounds": 1, "training.steps": 4,
                                "training.eval_every": 2, "controls": (),
                                "seeds.num": 2}), pair)
  with pytest.raises(lottery.LotteryError, match=r"same replicate"):
    analysis.table(lottery.records(wds[1]) + lottery.records(pair))
  # More rounds, another checkpoint interval: still replicates.
  more = tmp_path / "more"
  lottery.run(tiny(npz_path, **{"pruning.rounds": 2, "training.steps": 4,
                                "training.eval_every": 2, "controls": (),
                                "training.checkpoint_every": 2,
                                "seeds.init": 2, "seeds.data": 2}), more)
  assert [r["n"] for r in analysis.table(recs + lottery.records(more))] == [
      3, 3, 1]


def test_load_ticket_lists_the_coordinates_that_exist(npz_path, tmp_path):
  c = tiny(npz_path, **{"pruning.rounds": 1, "training.steps": 4,
                        "training.eval_every": 2,
                        "controls": ("reinit",)})
  lottery.run(c, tmp_path / "wd")
  with pytest.raises(lottery.LotteryError) as e:
    lottery.load_ticket(tmp_path / "wd", 99)
  msg = str(e.value)
  assert msg.startswith("round: no finished ticket with {'round': 99, "
                        "'kind': 'ticket'}")
  assert ("round in [0, 1] where kind='ticket'; kind in ['reinit', "
          "'ticket']") in msg
  assert "\n" not in msg
  # Each asked coordinate lists its values among the tickets that match the
  # others: the reinit control runs at round 1 only, round 0 has a ticket.
  with pytest.raises(lottery.LotteryError) as e:
    lottery.load_ticket(tmp_path / "wd", 0, "reinit")
  assert ("round in [1] where kind='reinit'; kind in ['ticket'] where "
          "round=0") in str(e.value)


def test_coordinate_values_sort_numbers_by_value_and_shorten_runs():
  from lottery import tickets  # pylint: disable=g-import-not-at-top
  assert tickets._values(sorted([10, 2, 1, 0], key=tickets._order)) == (
      "[0, 1, 2, 10]")
  assert tickets._values(list(range(33))) == "[0..32]"
  assert tickets._values(sorted([None, "a", 0.1, 0.03],
                                key=tickets._order)) == (
      "[0.03, 0.1, 'a', None]")
  assert tickets._values(list(range(0, 40, 2))).endswith("20, 22, ...]")


def test_launcher_refuses_another_methods_recipe(tmp_path):
  out = subprocess.run(
      [sys.executable, "-m", "experiments.imp", "--config=pai_mnist1d:quick",
       f"--workdir={tmp_path}/wd"], cwd=ROOT, capture_output=True, text=True,
      check=False)
  assert out.returncode == 1
  assert out.stderr.strip().splitlines() == [
      "error: method: 'pai_mnist1d:quick' is a 'pai' recipe and "
      "experiments.imp runs 'imp' ones; run it with python -m experiments.run "
      "--config=pai_mnist1d:quick"]
  assert not (tmp_path / "wd").exists()


def test_library_refuses_another_methods_config(npz_path, tmp_path):
  with pytest.raises(lottery.LotteryError,
                     match=r"^method: this launcher runs 'pai' recipes, the "
                     r"config is an 'imp' recipe; run it with "
                     r"lottery.driver.run\(config, workdir\) \(from a shell: "
                     r"python -m experiments.run\)$"):
    lottery.pai.run(tiny(npz_path), tmp_path / "wd")
  assert not (tmp_path / "wd").exists()
  with pytest.raises(lottery.LotteryError, match=r"^method: must be one of"):
    lottery.driver.run(tiny(npz_path, method="nope"), tmp_path / "wd")


def test_a_workdir_belongs_to_one_method(npz_path, tmp_path):
  c = tiny(npz_path, **{"pruning.rounds": 1, "training.steps": 4,
                        "training.eval_every": 2, "controls": ()})
  lottery.run(c, tmp_path / "wd")
  before = sorted(p.name for p in (tmp_path / "wd").iterdir())
  other = _pai(npz_path, ("random",), (0.2,))
  with pytest.raises(lottery.LotteryError) as e:
    lottery.pai.run(other, tmp_path / "wd")
  assert str(e.value) == (
      f"method: workdir {str(tmp_path / 'wd')!r} holds a run of method 'imp', "
      f"not 'pai'; a workdir belongs to one method: use a new --workdir")
  assert sorted(p.name for p in (tmp_path / "wd").iterdir()) == before
  assert lottery.driver.workdir_method(tmp_path / "wd") == "imp"
  with pytest.raises(lottery.LotteryError,
                     match=r"holds a run of method 'imp', not 'pai'; open "
                     r"notebooks/tickets.ipynb$"):
    lottery.driver.expect_method(tmp_path / "wd", "pai")


@pytest.mark.slow
def test_notebooks_name_the_one_that_fits(npz_path, tmp_path, monkeypatch):
  """The tickets notebook on a pruning-at-init workdir, and the
  pruning-at-init notebook on a missing one, each print one line."""
  from conftest import execute_notebook  # pylint: disable=g-import-not-at-top
  wd = tmp_path / "pai"
  lottery.pai.run(_pai(npz_path, ("random",), (0.2,)), wd)
  text = execute_notebook("tickets.ipynb", wd, monkeypatch, tmp_path)
  assert text.strip() == (
      f"error: workdir: {str(wd)!r} holds a run of method 'pai', not 'imp'; open "
      "notebooks/pruning_at_init.ipynb; set LOTTERY_WORKDIR to the --workdir "
      "of a run (e.g. python -m experiments.imp "
      "--workdir=/tmp/lottery_runs/mnist1d) and run again")
  text = execute_notebook("pruning_at_init.ipynb", tmp_path / "missing",
                          monkeypatch, tmp_path)
  assert text.strip().startswith("error: workdir: ")
  assert len(text.strip().splitlines()) == 1


def test_config_json_holds_the_methods_fields_and_legacy_ones_resume(
    npz_path, tmp_path):
  from lottery import checkpoint  # pylint: disable=g-import-not-at-top
  from lottery import config as config_lib  # pylint: disable=g-import-not-at-top
  c = tiny(npz_path, **{"pruning.rounds": 1, "training.steps": 4,
                        "training.eval_every": 2, "controls": ()})
  wd = tmp_path / "wd"
  summary = lottery.run(c, wd)
  saved = checkpoint.read_json(wd / "config.json")
  assert sorted(saved) == ["controls", "controls_every", "data", "method",
                           "model", "pruning", "seeds", "training"]
  assert lottery.load_config(wd).method == "imp"
  # A workdir written before configs named their method: every method's
  # fields, no 'method', no method in facts.json. It resumes (nothing
  # retrained) and is then recorded as IMP's.
  legacy = json_config = lottery.workdir.config_json(config_lib.complete(c))
  del legacy["method"]
  checkpoint.write_json(wd / "config.json", json_config)
  facts = checkpoint.read_json(wd / "facts.json")
  facts.pop("method")
  checkpoint.write_json(wd / "facts.json", facts)
  again = lottery.run(c, wd)
  assert again["rounds"] == summary["rounds"]
  assert checkpoint.read_json(wd / "config.json") == saved


def test_another_methods_field_is_refused(npz_path, tmp_path):
  c = tiny(npz_path)
  c.pai.methods = ("snip",)
  with pytest.raises(lottery.LotteryError,
                     match=r"^pai.methods: is not a field of method 'imp', "
                     r"which reads pruning, controls, controls_every"):
    lottery.run(c, tmp_path / "wd")
  assert not (tmp_path / "wd").exists()


def test_every_field_has_a_one_line_help():
  from lottery import config as config_lib  # pylint: disable=g-import-not-at-top
  fields = config_lib.schema_fields()
  assert sorted(config_lib.FIELD_HELP) == sorted(fields)
  assert all("\n" not in h and len(h) < 100
             for h in config_lib.FIELD_HELP.values())


def test_help_shows_the_methods_fields_with_descriptions():
  out = subprocess.run(
      [sys.executable, "-m", "experiments.run", "--config=pai_mnist1d:quick",
       "--help"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
  fields = [l.split()[0] for l in out.splitlines()
            if l.startswith("  ") and not l.startswith("   ") and
            "." in l.split()[0] and not l.split()[0].startswith("--")]
  assert "pai.methods" in fields and "pruning.prunable" in fields
  assert not any(f.startswith(("sparse.", "stability.")) or
                 f == "pruning.fraction" for f in fields)
  assert "scores that prune the initial weights" in out


def test_cli_suggests_the_field_an_abbreviation_means(tmp_path):
  out = subprocess.run(
      [sys.executable, "-m", "experiments.run", f"--workdir={tmp_path}/wd",
       "--config.training.lr=0.1"], cwd=ROOT, capture_output=True, text=True,
      check=False)
  assert out.returncode == 1
  assert out.stderr.strip() == (
      "error: config: no field 'training.lr' (did you mean "
      "'training.learning_rate'?)")


def test_a_workdir_without_label_smoothing_resumes_and_refuses_a_change(
    npz_path, tmp_path):
  """A workdir written before training.label_smoothing existed resumes at
  its default (nothing retrained); another value is another run."""
  from lottery import checkpoint  # pylint: disable=g-import-not-at-top
  c = tiny(npz_path, **{"pruning.rounds": 0, "training.steps": 4,
                        "training.eval_every": 2, "controls": ()})
  wd = tmp_path / "wd"
  summary = lottery.run(c, wd)
  saved = checkpoint.read_json(wd / "config.json")
  del saved["training"]["label_smoothing"]
  checkpoint.write_json(wd / "config.json", saved)
  assert lottery.run(c, wd)["rounds"] == summary["rounds"]
  c.training.label_smoothing = 0.1
  with pytest.raises(lottery.LotteryError, match="label_smoothing"):
    lottery.run(c, wd)


@pytest.mark.parametrize("method, notebook", [("imp", "tickets.ipynb"),
                                              ("pai", "pruning_at_init.ipynb"),
                                              ("sparse", "sparse_training.ipynb"),
                                              ("toy_densities", None)])
def test_a_finished_run_says_where_its_results_are(npz_path, tmp_path,
                                                   method, notebook):
  cfg = tiny(npz_path, method=method)
  if method == "imp":
    cfg.pruning.rounds = 1
  if method == "pai":
    cfg.pai.update(methods=("magnitude",), densities=(0.5,), checks=(),
                   dense=False)
  if method == "sparse":
    cfg.sparse.update(methods=("set",), densities=(0.5,), update_every=5)
  err = io.StringIO()
  wd = tmp_path / "wd"
  lottery.driver.run(cfg, wd, method=method,
                     progress=Progress(stream=err, out=io.StringIO(),
                                       live=False))
  last = err.getvalue().strip().splitlines()[-1]
  # A plug-in without a notebook of its own: the report.
  where = (f"notebook: LOTTERY_WORKDIR={wd} jupyter lab notebooks/{notebook}"
           if notebook else f"figures: python -m experiments.report {wd} "
           f"--out=DIR")
  assert last == (
      f"results: {wd / 'summary.json'}; tickets: "
      f"lottery.load_ticket({str(wd)!r}, ...); {where}; "
      f"curves: tensorboard --logdir {wd / 'tensorboard'}")


# -- the disk after a failure or an interruption -------------------------------

def test_a_group_read_back_is_where_an_interrupt_stops(npz_path, tmp_path):
  """A rerun reads finished groups back and computes their records (a
  stability pair's path, where a resumed group may not have it yet): an
  interrupt there names the group, not 'start-up'."""
  from lottery.progress import NullProgress  # pylint: disable=g-import-not-at-top
  c = tiny(npz_path, **{"pruning.rounds": 1, "controls": ()})
  lottery.run(c, tmp_path)
  seen = []

  class Recording(NullProgress):
    def group_trained(self, name):
      super().group_trained(name)
      seen.append(self.where())
  lottery.driver.run(c, tmp_path, progress=Recording())
  assert seen == [f"round {r} ticket, after its training (its tickets are "
                  f"saved)" for r in (0, 1)]


def test_a_diverged_job_is_named_and_its_last_update_is_checked(
    npz_path, tmp_path):
  """One step at a rate that blows the weights up: its training loss was
  computed before the update, so the test loss after it refuses the ticket
  (saved before, with a test loss of millions), naming the job."""
  c = tiny(npz_path, **{"training.learning_rate": 1000, "training.steps": 1,
                        "seeds.num": 2})
  with pytest.raises(lottery.LotteryError, match=(
      r"^training.learning_rate: test loss diverged after step 1 in round 0 "
      r"ticket seed 0 \(")):
    lottery.run(c, tmp_path)
  assert not workdir_lib.saved_anything(tmp_path)


def test_a_run_that_saved_nothing_is_replaced_by_another_config(
    npz_path, tmp_path):
  # A loss that diverges at once saves nothing (nothing is deleted either):
  # the corrected command runs there, replacing the failed run's config.
  wd = tmp_path / "new"
  c = tiny(npz_path, **{"training.learning_rate": 1000})
  with pytest.raises(lottery.LotteryError,
                     match=r"^training.learning_rate: loss diverged"):
    lottery.run(c, wd)
  assert not workdir_lib.saved_anything(wd)
  c.training.learning_rate = 1e-2
  lines = []
  assert lottery.run(c, wd, log=lines.append)["finished"]
  assert lottery.load_config(wd).training.learning_rate == 1e-2
  reference = tmp_path / "reference"
  lottery.run(c, reference)
  for r in (0, 1, 2):
    assert _same_tree(lottery.load_ticket(wd, r).trained_params,
                      lottery.load_ticket(reference, r).trained_params)
  # Sparse training writes its initial masks before training: still no
  # result, and the same.
  s = tiny(npz_path, method="sparse", **{"training.learning_rate": 1000,
                                         "sparse.methods": ("set",),
                                         "sparse.densities": (0.5,),
                                         "sparse.update_every": 5})
  with pytest.raises(lottery.LotteryError, match=r"loss diverged"):
    lottery.sparse.run(s, tmp_path / "sparse")
  s.training.learning_rate = 1e-2
  assert lottery.sparse.run(s, tmp_path / "sparse")["finished"]
  # A run that has saved a result is another config's run: refused, and
  # nothing there changes.
  before = {p: p.read_bytes() for p in wd.rglob("*") if p.is_file()
            and p.name != "lock"}
  c.training.learning_rate = 2e-2
  with pytest.raises(lottery.LotteryError, match=r"^config: workdir .* holds "
                     r"a run with a different config \(training.learning_rate: "
                     r".* -> 0.02\); use a new --workdir, or the run's own "
                     r"values to resume it \(lottery.load_config\(workdir\)\)$"):
    lottery.run(c, wd)
  assert {p: p.read_bytes() for p in wd.rglob("*") if p.is_file()
          and p.name != "lock"} == before


def test_a_users_files_are_never_taken_for_the_frameworks(npz_path,
                                                          tmp_path):
  # Names like a temporary file's, a 'lock' no run wrote, a symlinked lock:
  # the folder is not a new workdir, and nothing there is touched.
  mine = tmp_path / "mine"
  (mine / "data.20240101.tmp").mkdir(parents=True)
  (mine / "data.20240101.tmp" / "results.csv").write_text("precious")
  (mine / "notes.tmp").write_text("mine")
  (mine / "lock").write_text("my own lock file\n")
  snapshot = lambda d: {p: (p.read_bytes() if p.is_file() else None)
                        for p in d.rglob("*")}
  before = snapshot(mine)
  for _ in range(2):
    with pytest.raises(lottery.LotteryError, match=r"^workdir: .* is not "
                       r"empty and holds no lottery run"):
      lottery.run(tiny(npz_path), mine)
    assert snapshot(mine) == before
    for p in list(mine.iterdir()):
      if p.name != "lock":
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    before = snapshot(mine)  # A 'lock' alone that the framework did not write.
  outside = tmp_path / "outside.txt"
  outside.write_text("precious")
  linked = tmp_path / "linked"
  linked.mkdir()
  (linked / "lock").symlink_to(outside)
  with pytest.raises(lottery.LotteryError, match=r"^workdir: the lock file "
                     r".* is a symlink"):
    lottery.run(tiny(npz_path), linked)
  assert outside.read_text() == "precious"


def test_a_bad_checkpoint_floor_is_refused_before_writing(npz_path, tmp_path,
                                                          monkeypatch):
  monkeypatch.setenv("LOTTERY_CHECKPOINT_MIN_S", "-1")
  with pytest.raises(lottery.LotteryError,
                     match=r"^LOTTERY_CHECKPOINT_MIN_S: must be a number"):
    lottery.run(tiny(npz_path), tmp_path / "wd")
  assert not (tmp_path / "wd").exists()


def test_a_rerun_reading_finished_groups_leaves_the_summary_alone(
    npz_path, tmp_path, monkeypatch):
  wd = tmp_path / "wd"
  c = tiny(npz_path)
  lottery.run(c, wd)
  summary = (wd / "summary.json").read_bytes()
  # A rerun with nothing to train writes no summary (killed while reading
  # the groups back, it cannot leave a shorter, unfinished one).
  writes = []
  real = checkpoint.write_json
  monkeypatch.setattr(checkpoint, "write_json",
                      lambda p, o: (writes.append(os.fspath(p)), real(p, o)))
  lottery.run(c, wd)
  assert not [w for w in writes if w.endswith("summary.json")]
  assert (wd / "summary.json").read_bytes() == summary
  # Stale mid-run checkpoints (a run killed after its last ticket, before
  # it cleared them) go at the end of the next run.
  (wd / "progress" / "job_step00000010").mkdir(parents=True)
  lottery.run(c, wd)
  assert not (wd / "progress").exists()
  # A folder of the user's own under that name is left alone.
  (wd / "progress").mkdir()
  (wd / "progress" / "notes.txt").write_text("mine")
  lottery.run(c, wd)
  assert (wd / "progress" / "notes.txt").read_text() == "mine"


def test_a_ticket_written_again_is_unfinished_until_it_is_complete(tmp_path,
                                                                   monkeypatch):
  # Rewriting a finished ticket (a resumed group saves all its replicates
  # again) removes its finished marker first: interrupted while its arrays
  # are gone, it is not listed as finished.
  params = {"fc": {"kernel": np.ones((2, 3), np.float32)}}
  t = tickets.Ticket({"seed": 0}, {"fc": {"kernel": np.ones((2, 3), bool)}},
                     params, params, {"density": 1.0})
  tickets.save_ticket(tmp_path, "a", t)
  assert (tmp_path / "a" / tickets.METRICS).exists()

  def interrupted(path, tree):
    raise KeyboardInterrupt
  monkeypatch.setattr(checkpoint, "save", interrupted)
  with pytest.raises(KeyboardInterrupt):
    tickets.save_ticket(tmp_path, "a", t)
  assert not (tmp_path / "a" / tickets.METRICS).exists()
  assert not (tmp_path / "a" / "arrays").exists()
  with pytest.raises(lottery.LotteryError, match="no finished ticket"):
    tickets.read_ticket(tmp_path, "a")


def test_a_removal_is_at_once_for_readers(npz_path, tmp_path, monkeypatch):
  # Killed while deleting, a directory is already gone under its own name;
  # what is left has a temporary name, which the next claim deletes.
  wd = tmp_path / "wd"
  c = tiny(npz_path, **{"pruning.rounds": 1})
  lottery.run(c, wd)
  d = wd / "progress"
  (d / "ckpt").mkdir(parents=True)
  (d / "ckpt" / "x").write_text("1")
  real = shutil.rmtree
  with monkeypatch.context() as m:
    m.setattr(shutil, "rmtree",
              lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
      checkpoint.remove(d)
  assert shutil.rmtree is real and not d.exists()
  left = [p.name for p in wd.iterdir() if checkpoint.is_leftover(p.name)]
  assert len(left) == 1 and left[0].startswith("progress.lottery-removing-")
  lottery.run(c, wd)  # The claim deletes it.
  assert not [p for p in wd.rglob("*") if checkpoint.is_leftover(p.name)]

"""Replicates: seeds.num runs trained together in one compiled program, their
records, and devices (fake CPU devices in a subprocess); a damaged mid-run
checkpoint refused."""

import errno
import pathlib
import re
from typing import Any, NamedTuple

import jax
import numpy as np
import pytest

import lottery
from lottery import analysis
from lottery import jobs
from lottery import tickets

from conftest import compilations, run_on_devices, run_until_finished

KINDS = ("ticket", "reinit", "random_prune")


def quiet(_):
  pass


@pytest.fixture(scope="module")
def three(npz_path, tmp_path_factory):
  """seeds.num=3 from seed 1, and the single run of seed 2."""
  from conftest import tiny  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp("replicates")
  cfg = tiny(npz_path, **{"seeds.num": 3, "seeds.init": 1, "seeds.data": 1,
                          "seeds.control": 1, "pruning.rounds": 2})
  lines = []
  lottery.run(cfg, root / "three", log=lines.append)
  single = tiny(npz_path, **{"seeds.init": 2, "seeds.data": 2,
                             "seeds.control": 2, "pruning.rounds": 2})
  lottery.run(single, root / "single", log=quiet)
  return root / "three", root / "single", lines


def _same(a, b) -> bool:
  return all(np.array_equal(x, y)
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_replicate_is_the_single_run_of_its_seeds_bit_for_bit(three):
  # On the CPU the replicates' steps are unrolled (loop.replica_form): each
  # computes what its single run computes.
  assert jax.default_backend() == "cpu"
  run, single, _ = three
  for r in range(3):
    for kind in (("ticket",) if r == 0 else KINDS):
      a = lottery.load_ticket(run, r, kind, seed=1)  # seeds 1 + 1 = 2
      b = lottery.load_ticket(single, r, kind)
      for key in ("density", "layer_densities", "test_accuracy", "test_loss",
                  "train_loss", "history"):
        assert a.metrics[key] == b.metrics[key], (r, kind, key)
      for part in ("mask", "rewind_params", "trained_params"):
        assert _same(getattr(a, part), getattr(b, part)), (r, kind, part)


@pytest.mark.parametrize("method,fields", [
    # One 20-step chunk per evaluation: its train_loss is a mean of 20.
    ("pai", {"pai.methods": ("snip", "synflow"), "pai.densities": (0.2,),
             "pai.method_iterations": "synflow=3",
             "training.eval_every": 20}),
    # The methods whose updates draw random numbers (SET's regrowth) or read
    # the step's gradients (RigL).
    pytest.param("sparse", {"sparse.densities": (0.25,),
                            "sparse.update_every": 5, "sparse.end_step": 15,
                            "sparse.methods": ("set", "rigl")},
                 marks=pytest.mark.slow),
    # A group criterion that runs the model: scored a replicate at a time.
    ("imp", {"pruning.structure": "neuron", "pruning.group_score": "taylor",
             "pruning.rounds": 2, "pruning.fraction": 0.3})])
def test_other_methods_replicate_is_their_single_run(method, fields,
                                                     npz_path, tmp_path):
  from conftest import tiny  # pylint: disable=g-import-not-at-top
  seeds = lambda i: {f"seeds.{s}": i for s in ("init", "data", "control")}
  lottery.driver.run(tiny(npz_path, method=method, **fields, **seeds(0),
                          **{"seeds.num": 2}), tmp_path / "two", log=quiet)
  lottery.driver.run(tiny(npz_path, method=method, **fields, **seeds(1)),
                     tmp_path / "one", log=quiet)
  two = [r for r in lottery.records(tmp_path / "two") if r["seed"] == 1]
  one = lottery.records(tmp_path / "one")
  assert len(two) == len(one) > 2
  drop = lambda r: {k: v for k, v in r.items()
                    if k not in ("seed", "ticket", "workdir", "time_s")}
  assert [drop(r) for r in two] == [drop(r) for r in one]
  for a, b in zip(two, one):
    ta = tickets.read_ticket(tmp_path / "two", a["ticket"])
    tb = tickets.read_ticket(tmp_path / "one", b["ticket"])
    assert _same(ta.mask, tb.mask) and _same(ta.trained_params,
                                             tb.trained_params)


def test_training_replicas_picks_the_loop_form(npz_path):
  from conftest import tiny  # pylint: disable=g-import-not-at-top
  forms = [lottery.build(tiny(npz_path, **{"training.replicas": r})).loop
           .replicas for r in ("auto", "vmap", "unroll")]
  assert forms == ["unroll", "vmap", "unroll"]  # One CPU device: 'auto'.


def test_summary_has_mean_std_and_per_replicate_records(three):
  run, _, lines = three
  rounds = lottery.summary(run)["rounds"]
  assert len(rounds) == 3
  for rec in rounds:
    seeds = rec["seeds"]
    assert [s["seed"] for s in seeds] == [0, 1, 2]
    accs = [s["test_accuracy"] for s in seeds]
    assert rec["test_accuracy"] == pytest.approx(np.mean(accs), abs=1e-12)
    assert rec["test_accuracy_std"] == pytest.approx(np.std(accs), abs=1e-12)
    assert rec["ticket"] == seeds[0]["ticket"]
    assert "seed" not in rec
    for s in seeds:
      t = lottery.load_ticket(run, rec["round"], seed=s["seed"])
      assert t.metrics["test_accuracy"] == s["test_accuracy"]
      assert t.coords["seed"] == s["seed"]
  for name in ("reinit", "random_prune"):
    c = rounds[2]["controls"][name]
    assert [s["seed"] for s in c["seeds"]] == [0, 1, 2]
  # load_ticket without seed is replicate 0.
  assert lottery.load_ticket(run, 2).coords["seed"] == 0
  # records: one per ticket (7 jobs: round 0; rounds 1 and 2 with two
  # controls each) x 3 replicates, all with a seed.
  recs = lottery.records(run)
  assert len(recs) == 7 * 3 and all("seed" in r for r in recs)
  assert len({r["ticket"] for r in recs}) == len(recs)
  rows = analysis.table(recs)
  assert [row["n"] for row in rows] == [3] * 7
  # Replicates differ (different seeds), and the progress line says mean ± std.
  a, b = (lottery.load_ticket(run, 0, seed=i) for i in (0, 1))
  assert not np.array_equal(a.trained_params["fc1"]["kernel"],
                            b.trained_params["fc1"]["kernel"])
  assert any(line.startswith("round  2/2") and " ± " in line for line in lines)


def test_replicates_resume_bit_exact(tiny_config, tmp_path, monkeypatch):
  cfg = tiny_config(**{"seeds.num": 2, "pruning.rounds": 1,
                       "pruning.rewind_step": 5})
  lottery.run(cfg, tmp_path / "ref", log=quiet)

  class Stop(Exception):
    pass

  real_save, real_finish = jobs.MidRun.save, tickets.save_ticket
  calls = {"save": 0, "finish": 0}

  def save(self, *a, **k):
    real_save(self, *a, **k)
    calls["save"] += 1
    if calls["save"] == 1:
      raise Stop()

  def finish(*a, **k):
    real_finish(*a, **k)
    calls["finish"] += 1
    if calls["finish"] == 3:  # Between the two replicates of a job.
      raise Stop()
  monkeypatch.setattr(jobs.MidRun, "save", save)
  monkeypatch.setattr(tickets, "save_ticket", finish)
  stops = run_until_finished(cfg, tmp_path / "run", Stop)
  assert stops == 2
  for r in range(2):
    for kind in (("ticket",) if r == 0 else KINDS):
      for seed in (0, 1):
        a = lottery.load_ticket(tmp_path / "ref", r, kind, seed=seed)
        b = lottery.load_ticket(tmp_path / "run", r, kind, seed=seed)
        for x, y in zip(jax.tree.leaves(a.trained_params),
                        jax.tree.leaves(b.trained_params)):
          assert np.array_equal(x, y), (r, kind, seed)
        assert a.metrics["history"] == b.metrics["history"]


@pytest.mark.slow
def test_one_compilation_for_all_replicates(tiny_config, tmp_path):
  """Compilations of a run of 3 replicates = those of a run of 2: the step
  is compiled once for the stacked state, whatever the replicate count's
  effect on shapes (each count is its own program)."""
  counts = []
  for n in (2, 3):
    # Each run from empty in-memory caches: what earlier tests (or the run
    # of 2) compiled in this process must not count for one run only.
    jax.clear_caches()
    with compilations() as events:
      lottery.run(tiny_config(**{"seeds.num": n, "pruning.rounds": 2}),
                  tmp_path / str(n), log=quiet)
    counts.append(len(events))
  assert counts[0] == counts[1], counts


_DEVICES_SCRIPT = r"""
import json, sys
import jax
import lottery
from lottery import experiment, parallel
sys.path.insert(0, "tests")
from conftest import tiny
cfg = tiny(sys.argv[1], **{"seeds.num": 2, "pruning.rounds": 1})
exp = experiment.build(cfg)
mesh = exp.loop.mesh
out = {"devices": jax.device_count(), "mesh": parallel.describe(mesh),
       "data_sharded": str(exp.data.x.sharding)}
# A stacked state after one chunk: really split over the devices.
from lottery import loop as loop_lib, step as step_lib
import numpy as np
states = [step_lib.init_state(*exp.replicate_init(i)[:1], exp.tx,
                              mask=exp.dense_mask,
                              model_state=exp.replicate_init(i)[1], seed=i)
          for i in range(2)]
state = loop_lib.stack_states(states)
state = parallel.put_tree(state, parallel.state_sharding(mesh, state, True))
idx = np.stack([loop_lib.batch_indices(256, 16, s, 0, 4) for s in (0, 1)], 1)
state, _ = exp.loop.run(state, exp.data, idx, np.full(4, 1e-2, np.float32))
leaf = jax.tree.leaves(state.params)[0]
out["param_shards"] = sorted({str(s.index) for s in leaf.addressable_shards})
out["param_spec"] = list(leaf.sharding.spec)
lines = []
lottery.run(cfg, sys.argv[2], log=lines.append)
out["lines"] = lines
print(json.dumps(out))
"""


@pytest.mark.slow
@pytest.mark.parametrize("devices", [4])
def test_fake_devices_shard_and_match_one_device(npz_path, tmp_path, devices):
  from conftest import tiny  # pylint: disable=g-import-not-at-top
  out = run_on_devices(_DEVICES_SCRIPT, npz_path, str(tmp_path / "multi"),
                       devices=devices)
  assert out["devices"] == 4
  assert out["mesh"].startswith("replicas=2 data=2 (4 devices")
  # Replicate axis split in two, batch over the other two devices: each
  # device holds one replicate's parameters.
  assert out["param_spec"] == ["replicas"]
  assert len(out["param_shards"]) == 2
  # Same results as on one device, within float tolerance.
  cfg = tiny(npz_path, **{"seeds.num": 2, "pruning.rounds": 1})
  lottery.run(cfg, tmp_path / "one", log=quiet)
  for r in range(2):
    for seed in (0, 1):
      a = lottery.load_ticket(tmp_path / "one", r, seed=seed)
      b = lottery.load_ticket(tmp_path / "multi", r, seed=seed)
      assert a.metrics["density"] == b.metrics["density"]
      assert abs(a.metrics["test_accuracy"] - b.metrics["test_accuracy"]) \
          <= 0.02
      for x, y in zip(jax.tree.leaves(a.trained_params),
                      jax.tree.leaves(b.trained_params)):
        np.testing.assert_allclose(x, y, atol=1e-4)


def test_a_full_disk_under_tensorboard_is_the_one_line_error(tmp_path,
                                                            monkeypatch):
  tensorboardx = pytest.importorskip("tensorboardX")
  writer = jobs.tensorboard_writer(tmp_path, "run", 0)

  def full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")

  writer.add_scalar("x", 1.0, 0)
  for name in ("flush", "close"):
    monkeypatch.setattr(tensorboardx.SummaryWriter, name, full)
    with pytest.raises(lottery.LotteryError, match=(
        "^workdir: no space left on device while writing '.*tensorboard/run'"
        "; free space and rerun the same command to resume$")):
      getattr(writer, name)()


class _State(NamedTuple):
  step: Any
  w: Any


def test_damaged_progress_is_refused(tmp_path):
  midrun = jobs.MidRun(tmp_path, min_interval_s=0)
  state = _State(np.int32(10), np.arange(3, dtype=np.float32))
  history = [{"step": 5, "accuracy": 0.601}, {"step": 10, "accuracy": 0.7}]
  midrun.save("job", state, history, {})
  assert midrun.load("job", state)[1] == history
  meta = pathlib.Path(midrun.meta)
  text = meta.read_text()
  damaged = (r"^workdir: file '.*progress/progress.json' is damaged \(its "
             r"content differs from its checksum\); delete '.*progress' and "
             r"rerun the same command$")
  for old, new in (("0.601", "0.600"), (re.search(
      r'"history": \[.*?\n \]', text, re.S)[0], '"history": []')):
    meta.write_text(text.replace(old, new))
    with pytest.raises(lottery.LotteryError, match=damaged):
      midrun.load("job", state)

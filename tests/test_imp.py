"""IMP end to end on a tiny config: resets, controls, resume, compilation."""

import hashlib
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import lottery
from lottery import imp
from lottery import jobs
from lottery import masks
from lottery import models
from lottery import structure
from lottery import tickets

from conftest import compilations
from conftest import leaves_equal
from conftest import quiet
from conftest import run_interrupted

KINDS = ("ticket", "reinit", "random_prune")

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_summary_tickets_and_controls(tiny_config, tmp_path):
  summary = lottery.run(tiny_config(), tmp_path, log=quiet)
  rounds = summary["rounds"]
  assert [r["round"] for r in rounds] == [0, 1, 2]
  # mlp_tiny kernels: fc1 8x32 and out 32x3, layerwise at 0.5 per round.
  assert [r["density"] for r in rounds] == [1.0, 0.5, 0.25]
  assert "controls" not in rounds[0]
  assert set(rounds[1]["controls"]) == {"reinit", "random_prune"}
  on_disk = lottery.summary(tmp_path)
  assert on_disk["rounds"] == rounds and on_disk["finished"]
  assert lottery.finished_rounds(tmp_path) == [0, 1, 2]
  for kind in KINDS:
    t = lottery.load_ticket(tmp_path, 2, kind)
    assert t.metrics["density"] == 0.25
    assert 0.0 <= t.metrics["test_accuracy"] <= 1.0
    assert masks.counts(t.mask) == {"fc1/kernel": (64, 256),
                                    "out/kernel": (24, 96)}
    assert t.mask["fc1"]["bias"] is None
    for m, p in ((t.mask["fc1"]["kernel"], t.trained_params["fc1"]["kernel"]),
                 (t.mask["fc1"]["kernel"], t.rewind_params["fc1"]["kernel"])):
      assert np.all(p[~m] == 0.0)
  assert (tmp_path / "tensorboard").is_dir()
  assert any((tmp_path / "tensorboard").iterdir())


def test_rewind_to_init_and_controls(tiny_config, tmp_path):
  cfg = tiny_config()
  lottery.run(cfg, tmp_path, log=quiet)
  init = imp.build(cfg).init_params
  t1 = lottery.load_ticket(tmp_path, 1)
  t0 = lottery.load_ticket(tmp_path, 0)
  assert leaves_equal(t0.rewind_params, init)
  assert leaves_equal(t1.rewind_params, lottery.apply_mask(t1.mask, init))
  # The round-1 mask is magnitude pruning of round 0's trained weights.
  expected = lottery.prune(t0.mask, jax.tree.map(np.abs, t0.trained_params),
                           0.5, scope="layerwise")
  assert leaves_equal(t1.mask, expected)
  reinit = lottery.load_ticket(tmp_path, 1, "reinit")
  assert leaves_equal(reinit.mask, t1.mask)
  assert not np.array_equal(reinit.rewind_params["fc1"]["kernel"],
                            t1.rewind_params["fc1"]["kernel"])
  rand = lottery.load_ticket(tmp_path, 1, "random_prune")
  assert masks.counts(rand.mask) == masks.counts(t1.mask)
  assert not leaves_equal(rand.mask, t1.mask)
  assert leaves_equal(rand.rewind_params, lottery.apply_mask(rand.mask, init))


def test_rewind_to_step_k(tiny_config, tmp_path):
  cfg = tiny_config(**{"pruning.rewind_step": 7, "pruning.rounds": 1})
  lottery.run(cfg, tmp_path, log=quiet)
  t1 = lottery.load_ticket(tmp_path, 1)
  assert t1.metrics["start_step"] == 7
  point, _ = jobs.load_capture(tmp_path, "rewind_point")
  assert leaves_equal(t1.rewind_params, lottery.apply_mask(t1.mask, point))
  # The step-7 weights lie on round 0's trajectory: neither init nor final.
  t0 = lottery.load_ticket(tmp_path, 0)
  assert not leaves_equal(point, t0.rewind_params)
  assert not leaves_equal(point, t0.trained_params)
  # Round 1 trains steps 7..19 only, evaluated at 10, 15 and 20.
  assert [h["step"] for h in t1.metrics["history"]] == [10, 15, 20]
  assert lottery.load_ticket(tmp_path, 1, "reinit").metrics["start_step"] == 7


def test_lr_rewind_and_finetune(tiny_config, tmp_path):
  out = {}
  for reset in ("lr_rewind", "finetune"):
    cfg = tiny_config(**{"pruning.reset": reset, "pruning.rounds": 1,
                         "training.schedule": "step",
                         "training.lr_boundaries": (10,)})
    lottery.run(cfg, tmp_path / reset, log=quiet)
    t0 = lottery.load_ticket(tmp_path / reset, 0)
    t1 = lottery.load_ticket(tmp_path / reset, 1)
    # Both keep the trained weights (masked) and train from step 0.
    assert leaves_equal(t1.rewind_params,
                        lottery.apply_mask(t1.mask, t0.trained_params))
    assert t1.metrics["start_step"] == 0
    out[reset] = t1
  assert leaves_equal(out["lr_rewind"].rewind_params,
                      out["finetune"].rewind_params)
  # Fine-tuning runs at the final (decayed) rate, so it moves less.
  def moved(t):
    return float(np.abs(t.trained_params["fc1"]["kernel"]
                        - t.rewind_params["fc1"]["kernel"]).sum())
  assert moved(out["finetune"]) < moved(out["lr_rewind"])


def test_same_config_same_result(tiny_config, tmp_path):
  a = lottery.run(tiny_config(), tmp_path / "a", log=quiet)
  b = lottery.run(tiny_config(), tmp_path / "b", log=quiet)
  def strip(node):
    if isinstance(node, dict):
      return {k: strip(v) for k, v in node.items() if k != "time_s"}
    return [strip(v) for v in node] if isinstance(node, list) else node
  assert strip(a) == strip(b)
  for kind in KINDS:
    ta = lottery.load_ticket(tmp_path / "a", 2, kind)
    tb = lottery.load_ticket(tmp_path / "b", 2, kind)
    assert leaves_equal(ta.trained_params, tb.trained_params)


def test_seeds_are_separate(tiny_config, tmp_path):
  base = tiny_config(**{"pruning.rounds": 1})
  lottery.run(base, tmp_path / "base", log=quiet)
  ctl = tiny_config(**{"pruning.rounds": 1, "seeds.control": 5})
  lottery.run(ctl, tmp_path / "ctl", log=quiet)
  # A new control seed changes the controls, never the ticket.
  for kind, same in (("ticket", True), ("reinit", False),
                     ("random_prune", False)):
    a = lottery.load_ticket(tmp_path / "base", 1, kind)
    b = lottery.load_ticket(tmp_path / "ctl", 1, kind)
    assert leaves_equal(a.trained_params, b.trained_params) == same, kind


def test_resume_after_interruption_is_bit_exact(tiny_config, tmp_path,
                                                monkeypatch):
  cfg = tiny_config(**{"pruning.rewind_step": 5})
  lottery.run(cfg, tmp_path / "ref", log=quiet)
  # Interrupt at several points: mid-job (after a progress checkpoint), and
  # just after jobs finish; resume each time with the same call.
  interruptions = run_interrupted(
      lambda: lottery.run(cfg, tmp_path / "run", log=quiet), monkeypatch,
      saves=(1, 4), finishes=(2,))
  assert interruptions == 3
  for r in range(3):
    for kind in (("ticket",) if r == 0 else KINDS):
      a = lottery.load_ticket(tmp_path / "ref", r, kind)
      b = lottery.load_ticket(tmp_path / "run", r, kind)
      for f in ("mask", "rewind_params", "trained_params"):
        assert leaves_equal(getattr(a, f), getattr(b, f)), (r, kind, f)
      assert a.metrics["history"] == b.metrics["history"]


def _stop_at_first_checkpoint(cfg, wd, monkeypatch, program=None):
  """Runs `cfg` in `wd` until its first mid-run checkpoint is written (as
  by `program`, where given), then stops."""

  class Stop(Exception):
    pass

  real = jobs.MidRun.save

  def save_then_stop(self, *a, **k):
    if program is not None:
      self.program = program
    real(self, *a, **k)
    raise Stop

  monkeypatch.setattr(jobs.MidRun, "save", save_then_stop)
  with pytest.raises(Stop):
    lottery.run(cfg, wd, log=quiet)
  monkeypatch.setattr(jobs.MidRun, "save", real)


def test_a_damaged_mid_run_checkpoint_is_refused_writing_nothing(
    tiny_config, tmp_path, monkeypatch):
  """The resume refuses the damaged checkpoint before it writes anything:
  no file of the workdir changes and none is added (not even an empty
  TensorBoard events file)."""
  cfg = tiny_config()
  wd = tmp_path / "wd"
  _stop_at_first_checkpoint(cfg, wd, monkeypatch)
  meta = wd / "progress" / "progress.json"
  meta.write_text(meta.read_text().replace('"step"', '"steps"', 1))

  def files():
    return {p.relative_to(wd).as_posix(): p.read_bytes()
            for p in wd.rglob("*") if p.is_file()}
  before = files()
  with pytest.raises(lottery.LotteryError, match=r"^workdir: file .*"
                     r"progress.json' is damaged .* and rerun the same "
                     r"command$"):
    lottery.run(cfg, wd, log=quiet)
  assert files() == before


def test_a_resume_under_another_program_is_noted(tiny_config, tmp_path,
                                                 monkeypatch):
  """A job checkpointed by another program (another device count or
  replicate form: its float rounding differs) resumes with a note, since
  its result then equals neither program's uninterrupted run."""
  from lottery import progress  # pylint: disable=g-import-not-at-top
  cfg = tiny_config(**{"pruning.rounds": 0, "training.checkpoint_every": 10})
  wd = tmp_path / "wd"
  _stop_at_first_checkpoint(
      cfg, wd, monkeypatch,
      program="vmap on replicas=2 data=1 (2 devices; 1 process)")
  lines = []

  class Notes(progress.NullProgress):
    def info(self, line):
      lines.append(line)
  lottery.driver.run(cfg, wd, progress=Notes())
  assert [l for l in lines if l.startswith("note:")] == [
      "note: round 0 ticket resumes from step 10, checkpointed running vmap "
      "on replicas=2 data=1 (2 devices; 1 process) and continued running one "
      "replicate on one device: its result equals neither's uninterrupted "
      "run"]


def _cli(workdir, npz, *extra):
  return [sys.executable, "-m", "experiments.imp",
          f"--workdir={workdir}", "--config=configs/mnist1d.py:quick",
          "--config.data.name=npz", f"--config.data.path={npz}",
          "--config.model.name=mlp_tiny", "--config.training.steps=400",
          "--config.training.batch_size=16", "--config.training.eval_every=20",
          "--config.training.checkpoint_every=20", "--config.pruning.rounds=2",
          *extra]


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted(npz_path, tmp_path):
  env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
  ref = subprocess.run(_cli(tmp_path / "ref", npz_path), cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
  assert ref.returncode == 0, ref.stderr
  proc = subprocess.Popen(_cli(tmp_path / "run", npz_path), cwd=ROOT, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  # Kill once the run is inside round 1: round 0's ticket and the summary
  # naming it are on disk (the summary is written just after the ticket).
  deadline = time.time() + 240
  progress = tmp_path / "run" / "progress" / "progress.json"
  summary = tmp_path / "run" / tickets.SUMMARY
  while time.time() < deadline:
    if (tickets.is_finished(tmp_path / "run", tickets.imp_path(0))
        and summary.exists() and progress.exists()):
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not lottery.summary(tmp_path / "run")["finished"]
  res = subprocess.run(_cli(tmp_path / "run", npz_path), cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
  assert res.returncode == 0, res.stderr
  for r in range(3):
    for kind in (("ticket",) if r == 0 else KINDS):
      a = lottery.load_ticket(tmp_path / "ref", r, kind)
      b = lottery.load_ticket(tmp_path / "run", r, kind)
      assert leaves_equal(a.trained_params, b.trained_params), (r, kind)
      assert a.metrics["test_accuracy"] == b.metrics["test_accuracy"]


def test_compilations_do_not_grow_with_rounds(tiny_config, tmp_path):
  per_round = []
  cfg = tiny_config(**{"pruning.rounds": 4, "pruning.rewind_step": 3})
  with compilations() as events:
    lottery.run(cfg, tmp_path, log=quiet,
                on_round=lambda rec: per_round.append(len(events)))
  new = np.diff([0] + per_round)
  assert new[0] > 0  # Round 0 compiles the train step and evaluation.
  # Round 1 may compile pruning and control helpers once; after that, a new
  # mask, new weights and new controls must not compile anything.
  assert list(new[2:]) == [0, 0, 0], new


def test_workdir_of_another_config_is_refused_untouched(tiny_config, tmp_path):
  lottery.run(tiny_config(**{"pruning.rounds": 1}), tmp_path, log=quiet)
  def snapshot():
    return {p: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(tmp_path.rglob("*")) if p.is_file()}
  before = snapshot()
  with pytest.raises(lottery.LotteryError,
                     match=r"^config: .*pruning.fraction: 0.5 -> 0.3"):
    lottery.run(tiny_config(**{"pruning.rounds": 1, "pruning.fraction": 0.3}),
                tmp_path, log=quiet)
  assert snapshot() == before
  # The same config on a finished workdir reruns nothing and changes nothing.
  lottery.run(tiny_config(**{"pruning.rounds": 1}), tmp_path, log=quiet)
  after = {k: v for k, v in snapshot().items() if "tensorboard" not in str(k)}
  assert after == {k: v for k, v in before.items()
                   if "tensorboard" not in str(k)}


def test_foreign_workdir_is_refused(tiny_config, tmp_path):
  (tmp_path / "notes.txt").write_text("mine")
  with pytest.raises(lottery.LotteryError, match="^workdir: .*not empty"):
    lottery.run(tiny_config(), tmp_path, log=quiet)
  assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_ticket_on_model_of_other_shapes(tiny_config, tmp_path):
  cfg = tiny_config(**{"pruning.rounds": 0})
  lottery.run(cfg, tmp_path, log=quiet)
  other = tiny_config(**{"model.name": "lenet_300_100"})
  like = imp.build(other).init_params
  with pytest.raises(lottery.LotteryError, match="^ticket: "):
    lottery.load_ticket(tmp_path, 0, like=like)
  with pytest.raises(lottery.LotteryError, match="^round: no finished"):
    lottery.load_ticket(tmp_path, 3)


def test_non_finite_loss_raises_and_saves_nothing(tiny_config, tmp_path):
  cfg = tiny_config(**{"training.optimizer": "sgd",
                       "training.learning_rate": 1e3})  # The largest valid.
  with pytest.raises(lottery.LotteryError,
                     match="^training.learning_rate: loss "):
    lottery.run(cfg, tmp_path, log=quiet)
  assert not tickets.is_finished(tmp_path, tickets.imp_path(0))


def _read_events(path):
  """Parses a TensorBoard event file (TFRecord framing) with its protobuf."""
  import struct  # pylint: disable=g-import-not-at-top
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  data, events, pos = path.read_bytes(), [], 0
  while pos < len(data):
    (n,) = struct.unpack("<Q", data[pos:pos + 8])
    ev = event_pb2.Event()
    ev.ParseFromString(data[pos + 12:pos + 12 + n])
    events.append(ev)
    pos += 12 + n + 4
  return events


def test_tensorboard_events_are_readable(tiny_config, tmp_path):
  lottery.run(tiny_config(), tmp_path, log=quiet)

  def scalars(run):
    out = {}
    for events_file in (tmp_path / "tensorboard" / run).glob(
        "events.out.tfevents.*"):
      for ev in _read_events(events_file):
        for v in ev.summary.value:
          out.setdefault(v.tag, {})[ev.step] = v.simple_value
    return out

  summary = lottery.summary(tmp_path)["rounds"]
  s = scalars("summary")
  assert s["density"] == {0: 1.0, 1: 0.5, 2: 0.25}
  assert s["ticket_test_accuracy"][2] == pytest.approx(
      summary[2]["test_accuracy"])
  assert s["reinit_test_accuracy"][1] == pytest.approx(
      summary[1]["controls"]["reinit"]["test_accuracy"])
  # One TensorBoard run per job, with the same tags, so rounds overlay.
  r1 = scalars("rounds/round_001/ticket")
  assert set(r1["test_accuracy"]) == {5, 10, 15, 20}
  assert r1["test_accuracy"][20] == pytest.approx(summary[1]["test_accuracy"])
  assert set(scalars("rounds/round_001/reinit")["train_loss"]) == {
      5, 10, 15, 20}


def test_random_scores_prune_randomly_at_the_same_counts(tiny_config,
                                                         tmp_path):
  lottery.run(tiny_config(**{"pruning.rounds": 1, "controls": ()}),
              tmp_path / "mag", log=quiet)
  lottery.run(tiny_config(**{"pruning.rounds": 1, "controls": (),
                             "pruning.score": "random"}),
              tmp_path / "rnd", log=quiet)
  mag = lottery.load_ticket(tmp_path / "mag", 1)
  rnd = lottery.load_ticket(tmp_path / "rnd", 1)
  assert masks.counts(mag.mask) == masks.counts(rnd.mask)
  assert not leaves_equal(mag.mask, rnd.mask)
  assert not tickets.is_finished(tmp_path / "rnd",
                                 tickets.imp_path(1, "reinit"))


def test_validation_split_gives_early_stopping(tiny_config, tmp_path):
  cfg = tiny_config(**{"data.validation_size": 64, "pruning.rounds": 1})
  exp = imp.build(cfg)
  assert len(exp.dataset.y_train) == 192 and exp.data.val[0].shape[:2] == (
      1, 64)
  summary = lottery.run(cfg, tmp_path, log=quiet)
  for kind in KINDS:
    t = lottery.load_ticket(tmp_path, 1, kind)
    h = t.metrics["history"]
    best = int(np.argmin([e["val_loss"] for e in h]))
    assert t.metrics["early_stop_step"] == h[best]["step"]
    assert t.metrics["early_stop_test_accuracy"] == h[best]["accuracy"]
    assert t.metrics["val_accuracy"] == h[-1]["val_accuracy"]
  rec = summary["rounds"][1]
  assert rec["early_stop_step"] == lottery.load_ticket(
      tmp_path, 1).metrics["early_stop_step"]
  assert "early_stop_test_accuracy" in rec["controls"]["reinit"]


def test_linear_schedule_raises_sparsity_by_a_fixed_step(tiny_config,
                                                         tmp_path):
  """Density 1 - r * step: mlp_tiny's fc1 (256) and out (96) kernels lose 64
  and 24 weights every round, exactly."""
  cfg = tiny_config(**{"pruning.schedule": "linear", "pruning.fraction": 0.25,
                       "pruning.rounds": 3, "controls": ()})
  summary = lottery.run(cfg, tmp_path, log=quiet)
  assert [r["density"] for r in summary["rounds"]] == [1.0, 0.75, 0.5, 0.25]
  assert masks.counts(lottery.load_ticket(tmp_path, 3).mask) == {
      "fc1/kernel": (64, 256), "out/kernel": (24, 96)}
  assert imp.round_rate("geometric", 0.1, 5) == 0.1
  assert imp.round_rate("linear", 0.01, 51) == 0.02  # 0.01 / 0.5
  with pytest.raises(lottery.LotteryError, match="^pruning.rounds: with "
                     "pruning.schedule='linear'"):
    lottery.run(tiny_config(**{"pruning.schedule": "linear",
                               "pruning.fraction": 0.25,
                               "pruning.rounds": 4}), tmp_path / "x",
                log=quiet)
  assert not (tmp_path / "x").exists()


def test_a_resumed_job_checks_divergence_against_its_first_loss(
    tiny_config, tmp_path, monkeypatch):
  """The divergence limit is 1000 x the job's first loss; a resumed job took
  its first evaluation's mean training loss, lower, and stopped a run that
  the uninterrupted one finished."""
  from lottery import loop as loop_lib  # pylint: disable=g-import-not-at-top
  real, refs = loop_lib._check_loss, []  # pylint: disable=protected-access

  def check(losses, first, start):
    refs.append(np.asarray(first, np.float64).tolist())
    real(losses, first, start)
  monkeypatch.setattr(loop_lib, "_check_loss", check)
  cfg = tiny_config(**{"pruning.rounds": 0, "seeds.num": 2})
  lottery.run(cfg, tmp_path / "ref", log=quiet)
  want, refs[:] = refs[0], []
  assert run_interrupted(lambda: lottery.run(cfg, tmp_path / "run",
                                             log=quiet),
                         monkeypatch, saves=(1,)) == 1
  assert refs and all(r == want for r in refs)


def test_tensorboard_after_resume_has_no_duplicate_points(tiny_config,
                                                          tmp_path,
                                                          monkeypatch):
  """A job interrupted after its step-10 checkpoint (evaluations 5 and 10
  written) and resumed there writes its second file with a purge marker at
  step 10: as TensorBoard reads it, every evaluation appears once."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  cfg = tiny_config(**{"pruning.rounds": 0})
  assert run_interrupted(lambda: lottery.run(cfg, tmp_path, log=quiet),
                         monkeypatch, saves=(1,)) == 1
  files = sorted((tmp_path / "tensorboard" / "rounds" / "round_000" /
                  "ticket").glob("events.out.tfevents.*"),
                 key=lambda f: int(f.name.rsplit(".", 1)[-1]))
  assert len(files) == 2
  points = []  # (step, value), applying purge markers as TensorBoard does
  for f in files:
    for ev in _read_events(f):
      if ev.session_log.status == event_pb2.SessionLog.START:
        points = [(s, v) for s, v in points if s < ev.step]
      for v in ev.summary.value:
        if v.tag == "test_accuracy":
          points.append((ev.step, v.simple_value))
  assert sorted(s for s, _ in points) == [5, 10, 15, 20]
  history = lottery.load_ticket(tmp_path, 0).metrics["history"]
  assert [v for _, v in sorted(points)] == pytest.approx(
      [h["accuracy"] for h in history])


def test_layer_fractions_under_neuron_prune_each_set_at_its_rate(
    tiny_config, tmp_path):
  # lenet_300_100's unit sets: fc1 at the fraction 0.2, fc2 at 0.5; each
  # round removes round(rate * survivors) of each set.
  cfg = tiny_config(**{"model.name": "lenet_300_100",
                       "pruning.structure": "neuron", "pruning.fraction": 0.2,
                       "pruning.layer_fractions": "fc2/kernel=0.5",
                       "training.steps": 5, "training.eval_every": 5,
                       "training.checkpoint_every": 5, "controls": ()})
  lottery.run(cfg, tmp_path, log=quiet)
  coupling = lottery.models.get("lenet_300_100", 3).coupling()
  kept = [{k: int((~v).sum()) for k, v in structure.whole_units(
      lottery.load_ticket(tmp_path, r).mask, coupling).items()}
          for r in range(3)]
  assert kept == [{"fc1": 300, "fc2": 100}, {"fc1": 240, "fc2": 50},
                  {"fc1": 192, "fc2": 25}]


@pytest.mark.parametrize("overrides, message", [
    ({"model.name": "lenet_300_100",
      "pruning.layer_fractions": "out/kernel=0.5"},
     "pruning.layer_fractions: 'out/kernel' matches the kernel of no unit "
     "set's producer under structure 'neuron' (a set takes its producer's "
     "rate; producers: ['fc1/kernel', 'fc2/kernel'])"),
    ({"model.name": "mnist1d_mlp",
      "pruning.layer_fractions": "fc2/kernel=0.5"},
     "pruning.layer_fractions: the units of fc1+fc2 take one rate, but its "
     "producers' kernels get {'fc1/kernel': None, 'fc2/kernel': 0.5} (None: "
     "the fraction); give them one rate"),
])
def test_layer_fractions_a_model_cannot_take_are_refused_before_writing(
    tiny_config, tmp_path, overrides, message):
  cfg = tiny_config(**{"pruning.structure": "neuron", **overrides})
  with pytest.raises(lottery.LotteryError) as e:
    lottery.run(cfg, tmp_path / "wd", log=quiet)
  assert str(e.value) == message
  assert not (tmp_path / "wd").exists() or not any(
      (tmp_path / "wd").iterdir())


@pytest.mark.parametrize("overrides, match", [
    # mlp_tiny's 32 units at 0.5 a round: 16, 8, 4, 2, 1, then none.
    ({"pruning.rounds": 6}, r"^pruning.rounds: round 6 removes every unit "
     r"of fc1 \(32 units, pruning.structure 'neuron', pruning.scope "
     r"'layerwise', pruning.fraction 0.5\); use fewer rounds or a lower "
     r"fraction$"),
    # Every attention head of a block: vit_tiny's 4 heads, 2, 1, none.
    ({"model.name": "vit_tiny", "pruning.structure": "head",
      "pruning.scope": "module", "pruning.rounds": 3},
     r"^pruning.rounds: round 3 removes every unit of block1/attn/query\+"
     r"block1/attn/key\+block1/attn/value \(4 units, pruning.structure "
     r"'head', pruning.scope 'module'"),
    # A set at its own rate: lenet_300_100's fc2 keeps 10, 1, then none.
    ({"model.name": "lenet_300_100", "pruning.rounds": 3,
      "pruning.layer_fractions": "fc2/kernel=0.9"},
     r"^pruning.rounds: round 3 removes every unit of fc2 \(100 units, "
     r"pruning.structure 'neuron', pruning.scope 'layerwise', "
     r"pruning.layer_fractions rate 0.9\); use fewer rounds"),
    # Global: 32 units, round(0.9 * 32) = 29 go, then round(0.9 * 3) = 3.
    ({"pruning.scope": "global", "pruning.fraction": 0.9},
     r"^pruning.rounds: round 2 removes every unit of its 1 unit set\(s\) "
     r"together \(32 units, pruning.structure 'neuron', pruning.scope "
     r"'global', pruning.fraction 0.9\)"),
])
def test_rounds_that_remove_every_unit_of_a_set_are_refused_before_writing(
    tiny_config, tmp_path, overrides, match):
  cfg = tiny_config(**{"pruning.structure": "neuron", **overrides})
  with pytest.raises(lottery.LotteryError, match=match):
    lottery.run(cfg, tmp_path / "wd", log=quiet)
  assert not (tmp_path / "wd").exists()
  # One round fewer keeps a unit of every set.
  cfg.pruning.rounds -= 1
  imp._check_units_kept(cfg, imp.build(cfg))


@pytest.mark.parametrize("overrides, match", [
    # mlp_tiny on the blobs, at 0.5 a round (halves up): out/kernel's 96
    # weights keep 48, 24, 12, 6, 3, 1, then none; fc1/kernel's 256 last
    # two rounds more.
    ({"pruning.rounds": 9}, r"^pruning.rounds: round 7 removes every weight "
     r"of out/kernel \(96 weights, pruning.scope 'layerwise', "
     r"pruning.fraction 0.5\); use fewer rounds or a lower fraction$"),
    # Global: the 352 kernel weights keep 176, 88, 44, 22, 11, 5, 2, 1, 0.
    ({"pruning.rounds": 9, "pruning.scope": "global"},
     r"^pruning.rounds: round 9 removes every weight of all 2 prunable "
     r"parameter arrays together \(352 weights, pruning.scope 'global', "),
    # At its own rate: 96 keep 10, 1, then none.
    ({"pruning.rounds": 3, "pruning.layer_fractions": "out/kernel=0.9"},
     r"^pruning.rounds: round 3 removes every weight of out/kernel \(96 "
     r"weights, pruning.scope 'layerwise', pruning.layer_fractions rate "
     r"0.9\)"),
    # A module's kernel and bias together: fc1's 256 + 32 keep 144, 72, 36,
    # 18, 9, 4, 2, 1, 0; out's 99 empty at round 7 first.
    ({"pruning.rounds": 7, "pruning.scope": "module",
      "pruning.prunable": (".*kernel", ".*bias")},
     r"^pruning.rounds: round 7 removes every weight of module out \(99 "
     r"weights, pruning.scope 'module'"),
])
def test_rounds_that_remove_every_weight_of_a_layer_are_refused(
    tiny_config, tmp_path, overrides, match):
  cfg = tiny_config(**overrides)
  with pytest.raises(lottery.LotteryError, match=match):
    lottery.run(cfg, tmp_path / "wd", log=quiet)
  assert not (tmp_path / "wd").exists()
  cfg.pruning.rounds = int(re.search(r"round (\d+)", match).group(1)) - 1
  imp._check_weights_kept(cfg, imp.build(cfg))  # One round fewer: kept.
  # Biases alone may go: their layers still compute.
  cfg = tiny_config(**{"pruning.prunable": (".*kernel", ".*bias"),
                       "pruning.rounds": 6})
  imp._check_weights_kept(cfg, imp.build(cfg))  # out/bias: 3, 1, 0.
  cfg = tiny_config(**{"pruning.prunable": (".*bias",), "pruning.rounds": 6,
                       "pruning.scope": "module"})
  imp._check_weights_kept(cfg, imp.build(cfg))


def test_a_global_round_that_empties_a_unit_set_is_refused_at_its_prune(
    tiny_config, tmp_path):
  """Under global scope the scores decide each set's count: lenet_300_100's
  300 + 100 units keep 120, 36, 11 in rounds 1-3 (by the rounding rule),
  5 of them fc2's after round 3; round 4 removes 8 of the 11, all fc2's."""
  cfg = tiny_config(**{"model.name": "lenet_300_100",
                       "pruning.structure": "neuron",
                       "pruning.scope": "global", "pruning.fraction": 0.7,
                       "pruning.rounds": 4, "controls": ()})
  match = (r"^pruning.rounds: round 4 \(pruning.scope 'global', "
           r"pruning.fraction 0.7\) removes every unit of fc2 in replicate "
           r"0; rounds 0 to 3 stay in the workdir: for more, use a lower "
           r"fraction, pruning.scope 'layerwise' or fewer rounds in a new "
           r"workdir$")
  with pytest.raises(lottery.LotteryError, match=match):
    lottery.run(cfg, tmp_path, log=quiet)
  coupling = models.get("lenet_300_100", 3).coupling()
  alive = [[int((~d).sum()) for d in structure.whole_units(
      lottery.load_ticket(tmp_path, r).mask, coupling).values()]
           for r in range(4)]
  assert [sum(a) for a in alive] == [400, 120, 36, 11]
  assert alive[3] == [6, 5]
  assert not tickets.is_finished(tmp_path, tickets.imp_path(4, "ticket"))
  assert [r["round"] for r in lottery.summary(tmp_path)["rounds"]] == [
      0, 1, 2, 3]
  # The same config comes back to the refusal without training again.
  def snapshot():
    return {p: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(tmp_path.rglob("*"))
            if p.is_file() and "tensorboard" not in str(p)
            and p.name != "lock"}
  before = snapshot()
  with pytest.raises(lottery.LotteryError, match=match):
    lottery.run(cfg, tmp_path, log=quiet)
  assert snapshot() == before

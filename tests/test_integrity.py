"""Every file a result is read from is verified: JSON files carry a checksum,
summary.json agrees with the tickets' metrics.json, and damage is refused in
one line that names the file and what to delete."""

import json
import pathlib
import re
from typing import Any, NamedTuple

import numpy as np
import pytest

import lottery
from lottery import checkpoint
from lottery import jobs
from lottery import tickets
from conftest import tiny


def quiet(_):
  pass


def _flip(path: pathlib.Path, old: str, new: str) -> None:
  text = path.read_text()
  assert old in text, (path, old)
  path.write_text(text.replace(old, new))


@pytest.fixture
def run_1(npz_path, tmp_path):
  """A finished IMP run of rounds 0 and 1, and its config."""
  c = tiny(npz_path, **{"pruning.rounds": 1, "controls": ()})
  wd = tmp_path / "wd"
  lottery.run(c, wd, log=quiet)
  return c, wd


def test_a_changed_metric_is_refused_not_copied(run_1):
  c, wd = run_1
  m = wd / tickets.imp_path(1) / tickets.METRICS
  acc = json.loads(m.read_text())["test_accuracy"]
  text = m.read_text()
  # The same digit changed everywhere: test_accuracy and history.
  m.write_text(text.replace(json.dumps(acc), json.dumps(acc - 0.001)))
  assert m.read_text() != text
  before = _files(wd)
  damaged = (r"^workdir: file '.*round_001/ticket/metrics.json' is damaged "
             r"\(its content differs from its checksum\); delete "
             r"'.*round_001/ticket' \(that ticket's directory\) and rerun the "
             r"same command$")
  with pytest.raises(lottery.LotteryError, match=damaged):
    lottery.load_ticket(wd, 1)
  with pytest.raises(lottery.LotteryError, match=damaged):
    lottery.records(wd)
  with pytest.raises(lottery.LotteryError, match=damaged):
    lottery.run(c, wd, log=quiet)
  # Refused before anything is written: no summary.json cut short to round
  # 0, no new TensorBoard file.
  assert _files(wd) == before


def _files(wd: pathlib.Path) -> dict:
  return {p.relative_to(wd).as_posix(): p.read_bytes()
          for p in sorted(wd.rglob("*")) if p.is_file() and p.name != "lock"}


def test_a_changed_summary_is_refused(run_1):
  c, wd = run_1
  path = wd / tickets.SUMMARY
  pristine = path.read_text()
  # A flipped bit in a ticket's path (round_001 -> round_000).
  _flip(path, '"rounds/round_001/ticket"', '"rounds/round_000/ticket"')
  with pytest.raises(lottery.LotteryError, match=(
      r"^workdir: file '.*summary.json' is damaged \(its content differs "
      r"from its checksum\); delete '.*summary.json' and rerun the same "
      r"command$")):
    lottery.load_ticket(wd, 1)
  # The same under a valid checksum (a summary.json that disagrees with its
  # tickets however it came about): refused, never round 0's ticket.
  obj = json.loads(pristine)
  del obj[checkpoint.JSON_CHECKSUM]
  bad = json.loads(json.dumps(obj).replace('"rounds/round_001/ticket"',
                                           '"rounds/round_000/ticket"'))
  checkpoint.write_json(path, bad)
  with pytest.raises(lottery.LotteryError, match=(
      r"summary.json' is damaged \(its record of 'rounds/round_000/ticket' "
      r"has .*; delete")):
    lottery.load_ticket(wd, 1)
  # A changed metric under a valid checksum: refused by lottery.records.
  bad = json.loads(json.dumps(obj))
  bad["rounds"][1]["seeds"][0]["test_accuracy"] += 0.5
  checkpoint.write_json(path, bad)
  with pytest.raises(lottery.LotteryError, match=(
      r"summary.json' is damaged \(its record of 'rounds/round_001/ticket' "
      r"has test_accuracy=.*; delete '.*summary.json' and rerun")):
    lottery.records(wd)
  # Following the remedy gives back the complete result.
  path.unlink()
  assert lottery.run(c, wd, log=quiet) == json.loads(
      json.dumps({k: v for k, v in json.loads(pristine).items()
                  if k != checkpoint.JSON_CHECKSUM}))
  assert checkpoint.read_json(path) == checkpoint.read_json(path)


def test_a_workdir_older_than_checksums_still_reads(run_1):
  """Files without a checksum are read only in a workdir whose config.json
  has none (written before checksums); elsewhere they are damaged."""
  _, wd = run_1
  before = lottery.records(wd)
  m = wd / tickets.imp_path(1) / tickets.METRICS
  obj = json.loads(m.read_text())
  del obj[checkpoint.JSON_CHECKSUM]
  m.write_text(json.dumps(obj))
  with pytest.raises(lottery.LotteryError, match=r"metrics.json' is damaged "
                     r"\(it has no checksum \(_sha256\)\)"):
    lottery.load_ticket(wd, 1)
  for name in ("config.json", "facts.json", tickets.SUMMARY):
    obj = json.loads((wd / name).read_text())
    del obj[checkpoint.JSON_CHECKSUM]
    (wd / name).write_text(json.dumps(obj))
  assert checkpoint.predates_checksums(wd)
  assert lottery.records(wd) == before
  assert lottery.load_ticket(wd, 1).metrics["test_accuracy"] == (
      before[1]["test_accuracy"])


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


@pytest.mark.parametrize("method,overrides,message", [
    ("sparse", {"sparse.densities": (1e-12,), "sparse.methods": ("static",)},
     r"^sparse.densities: 1e-12 keeps no weight of layer '.*' \(\d+ weights, "
     r"distribution '.*'\); use a higher density$"),
    ("pai", {"pai.densities": (1e-12,)},
     r"^pai.densities: 1e-12 keeps no weight of layer '.*' \(\d+ weights, "
     r"pai.scope 'global': none of all \d+ prunable weights\); use a higher "
     r"density$"),
    ("pai", {"pai.densities": (0.005,), "pai.scope": "layerwise"},
     r"^pai.densities: 0.005 keeps no weight of layer '.*' \(\d+ weights, "
     r"pai.scope 'layerwise'\); use a higher density$")])
def test_a_density_that_keeps_no_weight_is_refused_before_writing(
    npz_path, tmp_path, method, overrides, message):
  c = tiny(npz_path, method=method, **overrides)
  with pytest.raises(lottery.LotteryError, match=message):
    lottery.driver.run(c, tmp_path / "wd", log=quiet)
  assert not (tmp_path / "wd").exists()


def _same(a, b) -> bool:
  import jax  # pylint: disable=g-import-not-at-top
  la, ta = jax.tree.flatten(a)
  lb, tb = jax.tree.flatten(b)
  return ta == tb and all(np.array_equal(x, y) for x, y in zip(la, lb))


def test_following_the_remedy_for_a_damaged_initial_mask(npz_path, tmp_path):
  """Damage, delete what the message names, rerun: bit-identical to an
  uninterrupted run, initial_mask included."""
  import shutil  # pylint: disable=g-import-not-at-top
  c = tiny(npz_path, method="sparse", **{
      "sparse.densities": (0.5,), "sparse.methods": ("set",),
      "sparse.update_every": 5})
  a, b = tmp_path / "a", tmp_path / "b"
  lottery.driver.run(c, a, log=quiet)
  shutil.copytree(a, b)
  rec = next(r for r in lottery.records(b) if r.get("method") == "set")
  im = b / rec["ticket"] / tickets.INITIAL_MASK
  victim = next(p for p in sorted(im.rglob("*"))
                if p.is_file() and p.name != checkpoint.CHECKSUMS)
  victim.write_bytes(victim.read_bytes() + b"x")
  with pytest.raises(lottery.LotteryError) as e:
    lottery.driver.run(c, b, log=quiet)
  m = re.search(r"; delete '([^']+)' \(that ticket's directory\) and rerun "
                r"the same command$", str(e.value))
  assert m and pathlib.Path(m[1]) == b / rec["ticket"], str(e.value)
  shutil.rmtree(m[1])
  lottery.driver.run(c, b, log=quiet)
  for r in lottery.records(a):
    ta, tb = (tickets.read_ticket(w, r["ticket"]) for w in (a, b))
    for field in ("mask", "rewind_params", "trained_params", "model_state",
                  "initial_mask"):
      assert _same(getattr(ta, field), getattr(tb, field)), (r, field)
    assert ta.initial_mask is not None
    ta.metrics.pop("time_s"), tb.metrics.pop("time_s")
    assert ta.metrics == tb.metrics


def test_a_refused_rerun_changes_nothing_and_its_remedy_works(run_1):
  """A deleted arrays/ of round 1: refused before summary.json or
  TensorBoard are written, with a remedy that leads back to the result."""
  import shutil  # pylint: disable=g-import-not-at-top
  c, wd = run_1
  want = lottery.summary(wd)
  shutil.rmtree(wd / tickets.imp_path(1) / "arrays")
  before = _files(wd)
  with pytest.raises(lottery.LotteryError, match=(
      r"^workdir: checkpoint '.*round_001/ticket/arrays' does not exist; "
      r"delete '(.*round_001/ticket)' \(that ticket's directory\) and rerun "
      r"the same command$")) as e:
    lottery.run(c, wd, log=quiet)
  assert _files(wd) == before
  shutil.rmtree(re.search(r"delete '([^']+)'", str(e.value))[1])
  got = lottery.run(c, wd, log=quiet)
  for r in (got, want):
    for rnd in r["rounds"]:
      for rec in [rnd, *rnd["seeds"]]:
        rec.pop("time_s", None)
  assert got == want

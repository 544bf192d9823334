"""The ticket store: records with coordinates, lookup by coordinates, one
random stream per use; and every file a result is read from verified (JSON
files carry a checksum, summary.json agrees with the tickets' metrics.json),
damage refused in one line that names the file and what to delete."""

import itertools
import json
import pathlib
import shutil
import re

import jax
import numpy as np
import pytest

import lottery
from lottery import checkpoint
from lottery import rng
from lottery import tickets

from conftest import tiny
from conftest import workdir_files


def quiet(_):
  pass


def test_records_carry_coordinates_and_ticket_paths(tiny_config, tmp_path):
  lottery.run(tiny_config(**{"controls_every": 2}), tmp_path, log=quiet)
  summary = json.loads((tmp_path / "summary.json").read_text())
  r2 = summary["rounds"][2]
  assert (r2["round"], r2["kind"], r2["ticket"]) == (
      2, "ticket", "rounds/round_002/ticket")
  assert r2["controls"]["reinit"]["ticket"] == "rounds/round_002/reinit"
  assert "controls" not in summary["rounds"][1]  # controls_every=2
  # One replicate: the round record is today's plus its std and its seeds.
  assert r2["test_accuracy_std"] == 0.0
  [s2] = r2["seeds"]
  assert s2["seed"] == 0 and s2["ticket"] == r2["ticket"]
  assert s2["test_accuracy"] == r2["test_accuracy"]
  recs = lottery.records(tmp_path)
  keys = [(r["round"], r["kind"]) for r in recs]
  # summary.json keeps keys sorted: controls by name after their round.
  assert keys == [(0, "ticket"), (1, "ticket"), (2, "ticket"),
                  (2, "random_prune"), (2, "reinit")]
  for r in recs:
    t = lottery.load_ticket(tmp_path, **{"round": r["round"],
                                         "kind": r["kind"]})
    assert t.coords == {"round": r["round"], "kind": r["kind"], "seed": 0}
    assert t.metrics["density"] == r["density"]
    assert t.metrics["test_accuracy"] == r["test_accuracy"]
  # The positional form and keywords agree; model_state is saved ({} here).
  a = lottery.load_ticket(tmp_path, 2, "reinit")
  b = lottery.load_ticket(tmp_path, round=2, kind="reinit")
  assert np.array_equal(a.mask["fc1"]["kernel"], b.mask["fc1"]["kernel"])
  assert a.model_state == {} and a.round == 2 and a.kind == "reinit"
  assert lottery.finished_rounds(tmp_path) == [0, 1, 2]
  # The run's saved config builds its experiment again (its other fields at
  # their defaults), whose evaluation of a ticket is the recorded one.
  exp = lottery.build(lottery.load_config(tmp_path))
  t = lottery.load_ticket(tmp_path, 2)
  state = lottery.step.init_state(t.trained_params, exp.tx, mask=t.mask,
                                  model_state=t.model_state)
  assert exp.loop.evaluate(state, exp.data)["accuracy"] == r2["test_accuracy"]


def test_unsummarised_tickets_are_listed_and_misuse_is_refused(tiny_config,
                                                              tmp_path):
  lottery.run(tiny_config(**{"pruning.rounds": 1}), tmp_path, log=quiet)
  # A run in flight: its summary lags behind the finished tickets.
  (tmp_path / "summary.json").unlink()
  assert [(r["round"], r["kind"]) for r in lottery.records(tmp_path)] == [
      (0, "ticket"), (1, "random_prune"), (1, "reinit"), (1, "ticket")]
  assert lottery.load_ticket(tmp_path, 1).metrics["density"] == 0.5
  # A stray directory under rounds/ is not a ticket.
  (tmp_path / "rounds" / "round_007" / "notes").mkdir(parents=True)
  assert len(lottery.records(tmp_path)) == 4
  with pytest.raises(lottery.LotteryError, match="^round: no finished"):
    lottery.load_ticket(tmp_path, 7)
  with pytest.raises(lottery.LotteryError, match="^round: must be an integer"):
    lottery.load_ticket(tmp_path, 1.0)
  with pytest.raises(lottery.LotteryError, match="^round: must be an integer"):
    lottery.load_ticket(tmp_path, "1")
  with pytest.raises(lottery.LotteryError, match="^kind: no finished"):
    lottery.load_ticket(tmp_path, kind="shuffle")
  # The field at fault is named: round 1 exists, its 'random' control not.
  with pytest.raises(lottery.LotteryError,
                     match=r"^kind: no finished .*kind in \['random_prune'"):
    lottery.load_ticket(tmp_path, 1, kind="random")
  with pytest.raises(lottery.LotteryError,
                     match=r"^rnd: no ticket of .* has that coordinate; it "
                           r"has round in \[0, 1\]"):
    lottery.load_ticket(tmp_path, 1, rnd=1)
  with pytest.raises(lottery.LotteryError, match="^ticket: give coordinates"):
    lottery.load_ticket(tmp_path)
  with pytest.raises(lottery.LotteryError, match="matches 2 tickets"):
    lottery.load_ticket(tmp_path, kind="ticket")
  (tmp_path / "plain").mkdir()
  with pytest.raises(lottery.LotteryError, match="^workdir: .* holds no run"):
    lottery.load_ticket(tmp_path / "plain", 0)
  with pytest.raises(lottery.LotteryError,
                     match="^workdir: .*nowhere. does not exist$"):
    lottery.load_ticket(tmp_path / "nowhere", 0)


def test_a_run_moved_inside_another_is_not_its_records(tiny_config,
                                                       tmp_path):
  c = tiny_config(**{"pruning.rounds": 1, "controls": ()})
  lottery.run(c, tmp_path / "a", log=quiet)
  before = lottery.records(tmp_path / "a")
  lottery.run(c, tmp_path / "b", log=quiet)
  (tmp_path / "b").rename(tmp_path / "a" / "rounds" / "b")
  (tmp_path / "a" / "summary.json").unlink()  # Listed from the tickets.
  assert [r["ticket"] for r in lottery.records(tmp_path / "a")] == [
      r["ticket"] for r in before]


def test_a_density_matches_the_digits_it_is_given_with(tiny_config,
                                                       tmp_path):
  """load_ticket(density=x) finds the ticket whose density is x, or where
  none is, the one whose density equals x at 4 decimals (as the progress
  lines print it); a value that is some density at fewer decimals only
  (0.2 for 0.24999) is refused, listing the densities."""
  lottery.run(tiny_config(**{"pruning.rounds": 3, "pruning.fraction": 0.04,
                             "controls": ()}), tmp_path, log=quiet)
  densities = [r["density"] for r in lottery.records(tmp_path)]
  assert [round(d, 1) for d in densities] == [1.0, 1.0, 0.9, 0.9], densities
  assert all(round(d, 4) != d for d in densities[1:]), densities
  for r, d in enumerate(densities):
    for asked in (round(d, 4), round(d, 6), np.float64(round(d, 4)),
                  np.float32(round(d, 4)), d):
      t = lottery.load_ticket(tmp_path, density=asked)
      assert (t.round, t.metrics["density"]) == (r, d)
  # Exact first: 1.0 is round 0's, though round 1's also rounds to it.
  assert lottery.load_ticket(tmp_path, density=1.0).round == 0
  assert lottery.load_ticket(tmp_path, density=1).round == 0
  # More digits than 4 tell tickets apart where 4 do not.
  recs = [{"density": 0.00013297, "round": 40},
          {"density": 0.00010638, "round": 41}]
  assert [r["round"] for r in tickets._matching(recs, {"density": 0.000133})
          ] == [40]
  assert len(tickets._matching(recs, {"density": 0.0001})) == 2
  # A computed value's noise digits beyond 4 significant ones do not count.
  recs = [{"density": 0.16777315179475638, "round": 8}]
  assert tickets._matching(recs, {"density": 0.8 ** 8}) == recs
  for asked in (0.9, round(densities[2], 2), round(densities[3], 3), 0.5):
    with pytest.raises(lottery.LotteryError,
                       match=r"^density: no finished ticket .* density in \["):
      lottery.load_ticket(tmp_path, density=asked)


def test_no_two_uses_share_a_key():
  """Every (use, round) pair of a seed gets its own key; in particular round
  r's random score and round r+1's random-pruning control differ."""
  keys = {}
  for use, r in itertools.product(rng.USES, range(40)):
    data = tuple(np.asarray(jax.random.key_data(rng.stream(0, use, r))))
    assert data not in keys, ((use, r), keys.get(data))
    keys[data] = (use, r)
  # And across seeds: seed s's streams are not seed s+1's.
  assert not np.array_equal(
      jax.random.key_data(rng.stream(0, "reinit", 1)),
      jax.random.key_data(rng.stream(1, "reinit", 1)))


def test_random_score_rounds_are_independent_of_the_control(tiny_config,
                                                           tmp_path):
  """With random scores, round 2's random-prune control does not lie inside
  round 1's ticket mask (the seed-stream bug of the first version)."""
  cfg = tiny_config(**{"pruning.score": "random", "controls": (
      "random_prune",), "pruning.fraction": 0.2})
  lottery.run(cfg, tmp_path, log=quiet)
  t1 = lottery.load_ticket(tmp_path, 1)
  c2 = lottery.load_ticket(tmp_path, 2, "random_prune")
  inside = np.asarray(c2.mask["fc1"]["kernel"]) <= np.asarray(
      t1.mask["fc1"]["kernel"])
  assert not inside.all()
  assert tickets.imp_path(2, "random_prune") == "rounds/round_002/random_prune"


def test_config_names_match_the_registries():
  from lottery import config as config_lib  # pylint: disable=g-import-not-at-top
  from lottery import controls  # pylint: disable=g-import-not-at-top
  from lottery import imp  # pylint: disable=g-import-not-at-top
  assert set(config_lib.RESETS) == set(imp.RESETS)
  assert set(config_lib.CONTROLS) <= set(controls.names())


def test_resume_on_changed_data_is_refused_untouched(tmp_path):
  from conftest import make_npz, tiny  # pylint: disable=g-import-not-at-top
  npz = make_npz(tmp_path / "data.npz")
  cfg = tiny(npz, **{"pruning.rounds": 0})
  lottery.run(cfg, tmp_path / "wd", log=quiet)
  before = {p: p.read_bytes() for p in (tmp_path / "wd").rglob("*")
            if p.is_file() and p.name != "lock"}
  make_npz(tmp_path / "data.npz", seed=1)  # Same path, other arrays.
  with pytest.raises(lottery.LotteryError,
                     match="^config: .*holds a run on different data "
                     r"\(data_fingerprint: "):
    lottery.run(cfg, tmp_path / "wd", log=quiet)
  after = {p: p.read_bytes() for p in (tmp_path / "wd").rglob("*")
           if p.is_file() and p.name != "lock"}
  assert after == before


def test_constant_schedule_notes_that_lr_rewind_is_finetune(tiny_config,
                                                            tmp_path):
  from lottery.progress import NullProgress  # pylint: disable=g-import-not-at-top
  infos = []

  class Notes(NullProgress):
    def info(self, line):
      infos.append(line)

  lottery.imp.run(tiny_config(**{"pruning.reset": "finetune",
                                 "pruning.rounds": 0}), tmp_path / "a",
                  progress=Notes())
  assert any("lr_rewind and finetune are the same procedure" in i
             for i in infos)
  assert lottery.__version__ and isinstance(lottery.__version__, str)


def test_store_functions_name_a_bad_workdir(tmp_path):
  for bad in (None, 123):
    for fn in (lambda w: lottery.load_ticket(w, 0), lottery.records):
      with pytest.raises(TypeError, match=r"^workdir: must be a path, str "
                         r"or os.PathLike \(got "):
        fn(bad)
  missing = tmp_path / "missing"
  for fn in (lambda w: lottery.load_ticket(w, 0), lottery.records):
    with pytest.raises(lottery.LotteryError,
                       match=rf"^workdir: {re.escape(repr(str(missing)))} "
                       r"does not exist$"):
      fn(missing)
    with pytest.raises(lottery.LotteryError, match=r" is not a directory$"):
      fn(__file__)
  # A folder of runs is no run: its runs' records are not mixed.
  (tmp_path / "runs" / "a").mkdir(parents=True)
  (tmp_path / "runs" / "a" / "config.json").write_text("{}")
  for fn in (lambda w: lottery.load_ticket(w, 0), lottery.records,
             lottery.finished_rounds):
    with pytest.raises(lottery.LotteryError,
                       match=r"^workdir: '.*runs' holds no run "
                       r"\(config.json missing\)$"):
      fn(tmp_path / "runs")


# --- damaged files ------------------------------------------------------------


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


def test_a_rerun_with_nothing_to_do_writes_nothing(run_1, npz_path):
  c, wd = run_1
  before = workdir_files(wd)
  lottery.run(c, wd, log=quiet)
  assert workdir_files(wd) == before  # Not even a TensorBoard events file.
  # One more round: one new summary events file, with every round's point.
  lottery.run(tiny(npz_path, **{"pruning.rounds": 2, "controls": ()}), wd,
              log=quiet)
  new = sorted(set(workdir_files(wd)) - set(before))
  events = [f for f in new if f.startswith("tensorboard/summary/")]
  assert len(events) == 1
  steps = _event_steps(wd / events[0])
  assert steps and all(s == [0, 1, 2] for s in steps.values()), steps


def _event_steps(path: pathlib.Path) -> dict[str, list[int]]:
  """{tag: [step, ...]} of a TensorBoard events file."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  data, steps = path.read_bytes(), {}
  while data:  # TFRecords: length, its CRC, the event, the event's CRC.
    n = int.from_bytes(data[:8], "little")
    event = event_pb2.Event.FromString(data[12:12 + n])
    data = data[16 + n:]
    for v in event.summary.value:
      steps.setdefault(v.tag, []).append(event.step)
  return steps


def test_a_rerun_that_retrains_a_middle_group_writes_every_point(npz_path,
                                                                 tmp_path):
  # A deleted control of round 1 (the remedy for a damaged ticket) is
  # trained again; the new events file holds every round's point, the
  # groups finished after it included (they are purged from the old file).
  c = tiny(npz_path, **{"pruning.rounds": 2, "controls": ("reinit",),
                        "controls_every": 1})
  wd = tmp_path / "wd"
  lottery.run(c, wd, log=quiet)
  before = set(workdir_files(wd))
  shutil.rmtree(wd / tickets.imp_path(1, "reinit"))
  lottery.run(c, wd, log=quiet)
  events = [f for f in set(workdir_files(wd)) - before
            if f.startswith("tensorboard/summary/")]
  assert len(events) == 1
  assert _event_steps(wd / events[0]) == {
      "density": [0, 1, 2], "ticket_test_accuracy": [0, 1, 2],
      "reinit_test_accuracy": [1, 2]}  # Controls from round 1.


def test_a_changed_metric_is_refused_not_copied(run_1):
  c, wd = run_1
  m = wd / tickets.imp_path(1) / tickets.METRICS
  acc = json.loads(m.read_text())["test_accuracy"]
  text = m.read_text()
  # The same digit changed everywhere: test_accuracy and history.
  m.write_text(text.replace(json.dumps(acc), json.dumps(acc - 0.001)))
  assert m.read_text() != text
  before = workdir_files(wd)
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
  assert workdir_files(wd) == before


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
  before = workdir_files(wd)
  with pytest.raises(lottery.LotteryError, match=(
      r"^workdir: checkpoint '.*round_001/ticket/arrays' does not exist; "
      r"delete '(.*round_001/ticket)' \(that ticket's directory\) and rerun "
      r"the same command$")) as e:
    lottery.run(c, wd, log=quiet)
  assert workdir_files(wd) == before
  shutil.rmtree(re.search(r"delete '([^']+)'", str(e.value))[1])
  got = lottery.run(c, wd, log=quiet)
  for r in (got, want):
    for rnd in r["rounds"]:
      for rec in [rnd, *rnd["seeds"]]:
        rec.pop("time_s", None)
  assert got == want

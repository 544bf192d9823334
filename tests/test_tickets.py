"""The ticket store: records with coordinates, lookup by coordinates, and one
random stream per use."""

import itertools
import json
import re

import jax
import numpy as np
import pytest

import lottery
from lottery import rng
from lottery import tickets


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
  with pytest.raises(lottery.LotteryError, match="^ticket: give coordinates"):
    lottery.load_ticket(tmp_path)
  with pytest.raises(lottery.LotteryError, match="matches 2 tickets"):
    lottery.load_ticket(tmp_path, kind="ticket")
  (tmp_path / "plain").mkdir()
  with pytest.raises(lottery.LotteryError, match="^workdir: .*not a lottery"):
    lottery.load_ticket(tmp_path / "plain", 0)
  with pytest.raises(lottery.LotteryError, match="^workdir: .*not a dir"):
    lottery.load_ticket(tmp_path / "nowhere", 0)


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
                       r"is not a directory$"):
      fn(missing)

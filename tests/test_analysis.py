"""lottery.analysis: records to tables, mean and std over replicates, masks
compared; hand-checked values."""

import math
import os
import re

import numpy as np
import pytest

from lottery import analysis
from lottery import checkpoint
from lottery import tickets


def _rec(round_, kind, acc, seed=None, density=None, **extra):
  r = {"round": round_, "kind": kind, "test_accuracy": acc,
       "density": 0.5 ** round_ if density is None else density,
       "ticket": f"rounds/round_{round_:03d}/{kind}", **extra}
  if seed is not None:
    r["seed"] = seed
    r["ticket"] = f"seed_{seed}/" + r["ticket"]
  return r


def test_replicates_keep_one_record_per_replicate():
  agg = {**_rec(1, "ticket", 0.75), "ticket": "seed_0/rounds/round_001/ticket"}
  records = [_rec(0, "ticket", 1.0), _rec(0, "ticket", 1.0),  # Listed twice.
             agg, _rec(1, "ticket", 0.5, seed=0), _rec(1, "ticket", 1.0,
                                                       seed=1)]
  out = analysis.replicates(records)
  # The aggregate names seed 0's directory: seed 0's record still stays.
  assert [(r["round"], r.get("seed"), r["ticket"]) for r in out] == [
      (0, None, "rounds/round_000/ticket"),
      (1, 0, "seed_0/rounds/round_001/ticket"),
      (1, 1, "seed_1/rounds/round_001/ticket")]


def test_mean_std_population_std_and_none_as_nan():
  assert analysis.mean_std([0.5, 1.0]) == (0.75, 0.25)
  assert analysis.mean_std([0.25]) == (0.25, 0.0)
  mean, std = analysis.mean_std([1.0, None])
  assert math.isnan(mean) and math.isnan(std)
  with pytest.raises(ValueError):
    analysis.mean_std([])


def test_table_groups_replicates_in_order():
  records = [_rec(0, "ticket", 1.0, seed=0), _rec(0, "ticket", 0.5, seed=1),
             _rec(1, "ticket", 0.75, seed=0), _rec(1, "ticket", 0.25, seed=1),
             _rec(1, "reinit", 0.5, seed=0), _rec(1, "reinit", 0.5, seed=1),
             # An aggregate of round 1 (no seed): not counted again.
             {**_rec(1, "ticket", 0.5), "test_accuracy_std": 0.25},
             {"method": "snip", "test_accuracy": 0.1, "density": 0.1,
              "ticket": "snip"}]  # No round: not an IMP group.
  assert analysis.table(records) == [
      {"round": 0, "kind": "ticket", "density": 1.0, "n": 2, "mean": 0.75,
       "std": 0.25},
      {"round": 1, "kind": "ticket", "density": 0.5, "n": 2, "mean": 0.5,
       "std": 0.25},
      {"round": 1, "kind": "reinit", "density": 0.5, "n": 2, "mean": 0.5,
       "std": 0.0}]
  # One replicate; a metric some records lack (no validation split there).
  records = [_rec(0, "ticket", 1.0, early_stop_step=20),
             _rec(1, "ticket", 0.5, early_stop_step=10),
             _rec(1, "reinit", 0.25)]
  assert analysis.table(records, "early_stop_step") == [
      {"round": 0, "kind": "ticket", "density": 1.0, "n": 1, "mean": 20.0,
       "std": 0.0},
      {"round": 1, "kind": "ticket", "density": 0.5, "n": 1, "mean": 10.0,
       "std": 0.0}]
  # A group must hold replicates: by kind alone, round 0's and round 1's
  # tickets of one replicate would be averaged (as PaI's methods with their
  # sanity checks under by=('method', 'target_density')).
  # Records of a run (`lottery.records` names their workdir) are checked;
  # records built by hand, without a seed or workdir, cannot be.
  with pytest.raises(analysis.LotteryError, match=r"^by: the group \{'kind': "
                     r"'ticket'\} holds records of one replicate that differ "
                     r"in \['round'\]: they are not replicates; add the "
                     r"coordinate they differ in to by$"):
    analysis.table([{**r, "workdir": "/run"} for r in records],
                   "test_accuracy", by=("kind",))
  assert analysis.table(records, "test_accuracy", by=("kind",))[0]["n"] == 2
  pai = [{"method": "snip", "check": c, "target_density": 0.1, "seed": 0,
          "test_accuracy": a, "density": 0.1, "ticket": f"snip/{c}"}
         for c, a in ((None, 0.3), ("shuffle", 0.2))]
  with pytest.raises(analysis.LotteryError, match=r"differ in \['check'\]"):
    analysis.table(pai, by=("method", "target_density"))
  assert [r["mean"] for r in analysis.table(
      pai, by=("method", "check", "target_density"))] == [0.3, 0.2]
  # A metric or a coordinate no record has is refused (a typo, IMP's
  # default coordinates on another method's records); no records, no rows.
  with pytest.raises(analysis.LotteryError, match=r"^metric: no record has "
                     r"'test_acc'; the records have \['density', "):
    analysis.table(records, "test_acc")
  snip = [{"method": "snip", "test_accuracy": 0.1, "density": 0.1,
           "ticket": "snip"}]
  with pytest.raises(analysis.LotteryError, match=r"^by: no record has "
                     r"'round'; the records have \['density', 'method', "):
    analysis.table(snip)
  assert analysis.table(snip, by=("method",))[0]["mean"] == 0.1
  assert analysis.table([]) == []


A = {"w": np.array([True, True, False, False]), "b": None,
     "v": np.array([[True], [False]])}
B = {"w": np.array([True, False, True, False]), "b": None,
     "v": np.array([[True], [True]])}


def test_overlap_and_jaccard_hand_checked():
  # a keeps 3, b keeps 4, both keep 2 (w[0], v[0]), either keeps 5.
  assert analysis.overlap(A, B) == 2 / 3
  assert analysis.overlap(B, A) == 0.5
  assert analysis.overlap(A, A) == 1.0
  assert analysis.jaccard(A, B) == 0.4
  assert analysis.jaccard(B, A) == 0.4


def test_chance_levels_follow_the_layers_densities():
  # a keeps 1 of 4 in w and 3 of 4 in v, b 2 and 2: a random mask of b's
  # densities keeps half of a's weights in each layer; E|a and b| is
  # 1*2/4 + 3*2/4 = 2, E|a or b| = (1+2-0.5) + (3+2-1.5) = 6.
  a = {"w": np.array([True, False, False, False]), "b": None,
       "v": np.array([True, True, True, False])}
  b = {"w": np.array([True, True, False, False]), "b": None,
       "v": np.array([False, False, True, True])}
  assert analysis.chance_overlap(a, b) == 0.5
  assert analysis.chance_jaccard(a, b) == analysis.chance_jaccard(b, a) == (
      2 / 6)
  # One density in every layer: d / (2 - d), the density for the overlap.
  half = {"w": np.array([True, False] * 4), "b": None,
          "v": np.array([False, True] * 2)}
  assert analysis.chance_jaccard(half, half) == 0.5 / 1.5
  assert analysis.chance_overlap(half, half) == 0.5
  # All of one layer and none of the other: random masks of these layer
  # densities are the same mask, whatever their density of 0.5 says.
  split = {"w": np.ones(8, bool), "b": None, "v": np.zeros(8, bool)}
  assert analysis.chance_jaccard(split, split) == 1.0
  assert analysis.chance_overlap(split, split) == 1.0
  # Drawn: random masks of two layers' densities (0.1 of 20,000, 0.9 of
  # 2,000) overlap at the chance level, far above d / (2 - d).
  rng = np.random.default_rng(0)
  draw = lambda: {"w": rng.permutation(20_000) < 2_000, "b": None,
                  "v": rng.permutation(2_000) < 1_800}
  pairs = [(draw(), draw()) for _ in range(10)]
  drawn = np.mean([analysis.jaccard(x, y) for x, y in pairs])
  chance = analysis.chance_jaccard(*pairs[0])
  d = 3_800 / 22_000
  assert abs(drawn - chance) < 0.005 and chance > 1.5 * d / (2 - d)
  drawn = np.mean([analysis.overlap(x, y) for x, y in pairs])
  assert abs(drawn - analysis.chance_overlap(*pairs[0])) < 0.005


def test_masks_pair_by_path_over_what_both_prune():
  # A mask that also prunes 'b' (another pruning.prunable) compares on the
  # weights both prune; leaves pair by name, whatever the tree's order.
  a_with_b = {**A, "b": np.array([True, False, True])}
  assert analysis.jaccard(a_with_b, B) == analysis.jaccard(A, B) == 0.4
  assert analysis.overlap(B, a_with_b) == 0.5
  # Layers positionally alike but of other names, or other shapes: refused.
  with pytest.raises(analysis.LotteryError, match=r"^mask: the two masks "
                     r"are of different parameters \(only in the first: "
                     r"\['w'\], only in the second: \['x'\]\)$"):
    analysis.jaccard(A, {"x" if k == "w" else k: m for k, m in B.items()})
  with pytest.raises(analysis.LotteryError, match=r"^mask: the two masks "
                     r"are of different parameters \(only in the second: "
                     r"\['x'\]\)$"):
    analysis.jaccard(A, {**A, "x": None})
  with pytest.raises(analysis.LotteryError, match=r"^mask: w has shape "
                     r"\(4,\) in the first mask and \(3,\) in the second"):
    analysis.overlap(A, {**B, "w": np.ones(3, bool)})


def _save(workdir, round_, kind, mask, history, seed=None):
  params = {k: None if m is None else np.ones(m.shape, np.float32)
            for k, m in mask.items()}
  params["b"] = np.zeros(3, np.float32)
  coords = {"round": round_, "kind": kind}
  path = tickets.imp_path(round_, kind)
  if seed is not None:
    coords["seed"] = seed
    path = f"seed_{seed}/{path}"
  kept = sum(int(m.sum()) for m in mask.values() if m is not None)
  metrics = {"density": kept / 6, "test_accuracy": 1.0,
             "layer_densities": {k: float(m.mean()) for k, m in mask.items()
                                 if m is not None}, "history": history}
  tickets.save_ticket(workdir, path, tickets.Ticket(
      coords, mask, params, params, metrics))
  return {**coords, "density": metrics["density"], "ticket": path}


def test_table_takes_scalars_and_curve_one_group(tmp_path):
  # A stability pair's accuracy is one value per copy: refused, not a mean
  # over its copies beside a count of pairs.
  pairs = [{"source": "dense", "k": 0, "seed": i, "density": 1.0,
            "test_accuracy": [0.5, 0.25 * i]} for i in (0, 1)]
  with pytest.raises(analysis.LotteryError, match=re.escape(
      "metric: 'test_accuracy' is a list, not a scalar, in the record "
      "{'source': 'dense', 'k': 0, 'seed': 0} (a stability pair's holds one "
      "value per copy: table the copies' own records, lottery.records)")):
    analysis.table(pairs, "test_accuracy", by=("source", "k"))
  pairs = [{**p, "path": {"alpha": [0.0, 1.0]}} for p in pairs]
  with pytest.raises(analysis.LotteryError, match="^metric: 'path' is a dict"):
    analysis.table(pairs, "path", by=("source", "k"))
  # The curve of one replicate's two rounds is no curve of replicates.
  hist = [{"step": 5, "accuracy": 0.5, "loss": 1.0}]
  recs = [{**_save(tmp_path, r, "ticket", A, hist, seed=0),
           "workdir": os.fspath(tmp_path)} for r in (0, 1)]
  with pytest.raises(analysis.LotteryError, match=re.escape(
      "records: two of them are of one replicate and differ in ['round']: "
      "a curve averages the replicates of one group; select one value of "
      "['round']")):
    analysis.curve(tmp_path, recs)
  assert analysis.curve(tmp_path, recs[:1])["mean"] == [0.5]


def test_tables_from_a_workdir(tmp_path):
  full = {"w": np.ones(4, bool), "b": None, "v": np.ones((2, 1), bool)}
  hist = lambda accs: [{"step": 5 * (i + 1), "accuracy": a, "loss": 1.0}
                       for i, a in enumerate(accs)]
  records = [
      _save(tmp_path, 0, "ticket", full, hist([0.5, 1.0])),
      _save(tmp_path, 1, "ticket", B, hist([0.25, 0.75])),
      _save(tmp_path, 1, "random_prune", A, hist([0.25, 0.25])),
      # Round 2 pruned B to A ∧ B (w[0], v[0]): nested.
      _save(tmp_path, 2, "ticket", {"w": np.array([True, False, False,
                                                   False]), "b": None,
                                    "v": np.array([[True], [False]])},
            hist([0.5]))]
  # Not a mask leaf: the saved mask has no 'b'; reading it back gives None.
  assert tickets.read_ticket(tmp_path, records[1]["ticket"]).mask["b"] is None
  assert analysis.ticket_metrics(tmp_path, records[1])["history"] == hist(
      [0.25, 0.75])
  assert analysis.layer_table(tmp_path, records) == [
      {"round": 0, "density": 1.0, "layers": {"w": 1.0, "v": 1.0}},
      {"round": 1, "density": 4 / 6, "layers": {"w": 0.5, "v": 1.0}},
      {"round": 2, "density": 2 / 6, "layers": {"w": 0.25, "v": 0.5}}]
  assert analysis.overlap_table(tmp_path, records) == [
      {"round": 1, "kind": "ticket", "seed": None,
       "ticket": "rounds/round_001/ticket", "workdir": os.fspath(tmp_path),
       "density": 4 / 6, "kept_from_previous": 1.0, "jaccard_previous": 4 / 6,
       "overlap_random_prune": 0.5, "chance_random_prune": 0.5},
      {"round": 2, "kind": "ticket", "seed": None,
       "ticket": "rounds/round_002/ticket", "workdir": os.fspath(tmp_path),
       "density": 2 / 6, "kept_from_previous": 1.0, "jaccard_previous": 0.5}]
  assert analysis.curve(tmp_path, records[:1]) == {
      "step": [5, 10], "mean": [0.5, 1.0], "std": [0.0, 0.0]}
  # The records' names of the test metrics work too; a field no history
  # has is refused, listing theirs.
  assert analysis.curve(tmp_path, records[:1], "test_accuracy") == {
      "step": [5, 10], "mean": [0.5, 1.0], "std": [0.0, 0.0]}
  with pytest.raises(analysis.LotteryError, match=r"^key: the tickets' histories have "
                     r"no 'val_loss'; they have \['accuracy', 'loss'\]$"):
    analysis.curve(tmp_path, records[:1], "val_loss")
  # The records alone, or the two swapped: one line naming the order.
  with pytest.raises(analysis.LotteryError, match=r"^workdir: curve\(workdir, "
                     r"records, ...\) takes the run's workdir first \(got "
                     r"list\)$"):
    analysis.curve(records[:1], "accuracy")
  for fn in (analysis.layer_table, analysis.overlap_table):
    with pytest.raises(analysis.LotteryError, match=r"^records: \w+\(workdir, "
                       r"records, ...\) takes a list of records second"):
      fn(tmp_path, tmp_path)
  # Two replicates of one group: the steps both have, mean and std.
  reps = [_save(tmp_path, 3, "ticket", B, hist([0.5, 1.0]), seed=0),
          _save(tmp_path, 3, "ticket", B, hist([1.0]), seed=1)]
  assert analysis.curve(tmp_path, reps) == {
      "step": [5], "mean": [0.75], "std": [0.25]}
  # A JSON null (NaN) in a history counts as NaN, not as a missing step.
  m = checkpoint.read_json(tmp_path / reps[1]["ticket"] / tickets.METRICS)
  m["history"][0]["accuracy"] = None
  checkpoint.write_json(tmp_path / reps[1]["ticket"] / tickets.METRICS, m)
  c = analysis.curve(tmp_path, reps)
  assert c["step"] == [5] and math.isnan(c["mean"][0])


def test_records_of_several_runs_are_read_from_their_own(tmp_path):
  """Records of two runs (as `lottery.records` lists them, each naming its
  workdir) combine: curves, layer densities and overlaps read each
  ticket from its own run, and compare rounds within a run."""
  hist = lambda accs: [{"step": 5 * (i + 1), "accuracy": a}
                       for i, a in enumerate(accs)]
  full = {"w": np.ones(4, bool), "b": None, "v": np.ones((2, 1), bool)}
  runs = []
  for name, second, accs in (("one", A, [0.25, 0.5]), ("two", B, [0.75, 1.0])):
    wd = tmp_path / name
    runs.append([{**_save(wd, 0, "ticket", full, hist([0.0, 0.0])),
                  "workdir": os.fspath(wd)},
                 {**_save(wd, 1, "ticket", second, hist(accs)),
                  "workdir": os.fspath(wd)}])
  both = runs[0] + runs[1]
  # The workdir argument is another run's: each record's own is read.
  assert analysis.curve(tmp_path / "one", runs[1][1:]) == {
      "step": [5, 10], "mean": [0.75, 1.0], "std": [0.0, 0.0]}
  assert analysis.curve(tmp_path / "one", [runs[0][1], runs[1][1]]) == {
      "step": [5, 10], "mean": [0.5, 0.75], "std": [0.25, 0.25]}
  assert analysis.layer_table(tmp_path / "one", both)[1] == {
      "round": 1, "density": 0.5 * (3 / 6 + 4 / 6),
      "layers": {"w": 0.5, "v": 0.75}}
  rows = analysis.overlap_table(tmp_path / "one", both)
  assert [(r["workdir"], r["kept_from_previous"], r["jaccard_previous"])
          for r in rows] == [(os.fspath(tmp_path / "one"), 1.0, 3 / 6),
                             (os.fspath(tmp_path / "two"), 1.0, 4 / 6)]

"""Tables of a run's tickets for notebooks: records in, plain rows out.

No plotting here (notebooks/tickets.ipynb draws these tables). Rows are
plain dicts of Python numbers, so they print, plot and go to JSON as they are.

Replicates: a run with several replicates lists, per (round, kind), one
record per replicate (each with its `seed`), and may also list an aggregate
record (its round's summary entry, without `seed`). `replicates` keeps the
per-replicate records; `table` then gives the mean and the standard deviation
over them. A run of one replicate has one record per (round, kind): its std
is 0.0 and its `n` 1.

Standard deviations are population ones (ddof=0, numpy's default): the
spread of the replicates that ran, not an estimate for unseen ones.
"""

from __future__ import annotations

import math
import os
import pathlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from lottery import checkpoint
from lottery import masks as masks_lib
from lottery import tickets
from lottery.errors import LotteryError

Record = Mapping[str, Any]


def replicates(records: Iterable[Record]) -> list[dict]:
  """The records that stand for one replicate each, in their order.

  A ticket listed twice (same `workdir` and `ticket` directory) is kept
  once; where a (round, kind) of a workdir has records with a `seed`, its
  records without one (the aggregate of its replicates) are dropped. Records
  of several workdirs (`records(a) + records(b)`) are all kept: two
  single-seed runs are two replicates of their (round, kind).

  Args:
    records: records as `lottery.records(workdir)` lists them.

  Returns:
    Copies of the kept records.
  """
  records = list(records)
  # Records of several workdirs combine: a ticket is (workdir, directory).
  run = lambda r: r.get("workdir")
  seeded = {(run(r), r.get("round"), r.get("kind")) for r in records
            if "seed" in r}
  out, seen = [], set()
  for r in records:
    # Filter before deduplicating: an aggregate may name the directory of
    # one of its replicates.
    if "seed" in r or (run(r), r.get("round"), r.get("kind")) not in seeded:
      # Rows that name no ticket (the stability analysis's pairs) are kept.
      if "ticket" not in r or (run(r), r["ticket"]) not in seen:
        seen.add((run(r), r.get("ticket")))
        out.append(dict(r))
  return out


def mean_std(values: Sequence[float | None]) -> tuple[float, float]:
  """Mean and population std of `values`; None (a NaN in JSON) counts as NaN.

  Raises:
    ValueError: if `values` is empty.
  """
  if not values:
    raise ValueError("mean_std of no values")
  x = np.asarray([math.nan if v is None else v for v in values], np.float64)
  return float(x.mean()), float(x.std())


def table(records: Iterable[Record], metric: str = "test_accuracy", *,
          by: Sequence[str] = ("round", "kind")) -> list[dict]:
  """One row per group of replicates: mean and std of `metric` over them.

  Args:
    records: records as `lottery.records` lists them (`replicates` is
      applied here), or a workdir (its records).
    metric: a scalar of the records, e.g. 'test_accuracy', 'early_stop_step'.
    by: the coordinates that name a group (IMP's by default; e.g.
      ('method', 'target_density') for pruning at init, ('source', 'k') for
      the stability analysis's copies); records lacking one are skipped.

  Returns:
    [{**coords, 'density', 'n', 'mean', 'std'}, ...] in order of first
    appearance; 'density' is the mean density of the group; groups none of
    whose records has `metric` are left out; [] for no records.

  Raises:
    LotteryError: if no record has `metric`, or one of `by`, or a record's
      `metric` is not a scalar (a list, a dict).
  """
  if isinstance(records, (str, os.PathLike)):
    records = tickets.records(records)
  records = replicates(records)
  for field, name in [*(("by", k) for k in by), ("metric", metric)]:
    if records and not any(name in r for r in records):
      have = sorted({k for r in records for k in r} - {"workdir", "ticket"})
      raise LotteryError(f"{field}: no record has {name!r}; the records "
                         f"have {have}")
  _check_replicate_runs(records, by)
  groups: dict[tuple, list[dict]] = {}
  for r in records:
    if metric in r and all(k in r for k in by):
      if not _is_scalar(r[metric]):
        raise LotteryError(
            f"metric: {metric!r} is a {type(r[metric]).__name__}, not a "
            f"scalar, in the record {_where(r, by)} (a stability pair's "
            f"holds one value per copy: table the copies' own records, "
            f"lottery.records)")
      groups.setdefault(tuple(r[k] for k in by), []).append(r)
  rows = []
  for key, group in groups.items():
    _check_one_replicate_each(group, by, key)
    mean, std = mean_std([r[metric] for r in group])
    rows.append({**dict(zip(by, key)),
                 "density": mean_std([r["density"] for r in group])[0],
                 "n": len(group), "mean": mean, "std": std})
  return rows


def _is_scalar(value: Any) -> bool:
  return value is None or isinstance(value, (int, float, np.number))


def _where(record: Record, by: Sequence[str]) -> str:
  return str({k: record.get(k) for k in (*by, "seed") if k in record})


def _same_replicate_twice(group: list[Record]) -> list[str] | None:
  """The coordinates two records of `group` of one replicate (one run, seed
  and copy) differ in, or None if each replicate has one record."""
  seen: dict[tuple, Record] = {}
  for r in group:
    if "workdir" not in r and "seed" not in r:
      continue  # Records built by hand: nothing tells replicates apart.
    who = (r.get("workdir"), r.get("seed"), r.get("copy"))
    if who in seen:
      other = seen[who]
      # Coordinates: named so, or values that are not measurements.
      return sorted(k for k in set(r) | set(other)
                    if k not in _METRICS and r.get(k) != other.get(k) and
                    (k in tickets.COORDINATES or
                     not isinstance(r.get(k), float)))
    seen[who] = r
  return None


def _check_one_replicate_each(group: list[Record], by: Sequence[str],
                              key: tuple) -> None:
  """Refuses a group of `table` that holds two records of one replicate:
  `by` leaves out a coordinate they differ in (PaI's 'check', say), and
  their mean would mix different things."""
  differ = _same_replicate_twice(group)
  if differ is not None:
    raise LotteryError(
        f"by: the group {dict(zip(by, key))} holds records of one "
        f"replicate that differ in {differ}: they are not replicates; "
        f"add the coordinate they differ in to by")


# Keys of a record that are not coordinates (`_check_one_replicate_each`).
_METRICS = ("ticket", "density", "test_accuracy", "test_loss", "train_loss",
            "val_accuracy", "val_loss", "time_s", "layer_densities",
            "start_step", "steps", "early_stop_step")


# Fields that say how a run executes or how far it went, not what its
# tickets compute: runs that differ in these and their seeds alone are
# replicates (pruning.rounds: one run extended with more rounds).
_HOW = ("training.replicas", "training.loop", "training.checkpoint_every",
        "training.eval_every", "data.data_dir", "data.cache_dir",
        "data.on_device", "pruning.rounds")


def _check_replicate_runs(records: list[Record], by: Sequence[str]) -> None:
  """Records of several workdirs are replicates only of runs whose configs
  differ in their seeds (and `_HOW`) alone, and never the same replicate
  twice: replicate i of a run trains from seeds.init + i on the data order
  of seeds.data + i. Runs whose workdir is not on this disk are not checked.

  Raises:
    LotteryError: naming the two workdirs and what differs.
  """
  from lottery import config as config_lib  # pylint: disable=g-import-not-at-top
  from lottery import runs  # pylint: disable=g-import-not-at-top
  from lottery import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  by_run: dict[str, list[Record]] = {}
  for r in records:
    if "workdir" in r:
      by_run.setdefault(r["workdir"], []).append(r)
  if len(by_run) < 2:
    return
  seen: dict[str, dict] = {}
  first_of: dict[tuple, str] = {}
  for where, recs in by_run.items():
    try:
      config = config_lib.complete(runs.load_config(where))
    except LotteryError:
      continue
    flat = workdir_lib.flatten(config.to_dict())
    seeds = {k: flat.pop(k) for k in list(flat) if k.startswith("seeds.")}
    for k in _HOW:
      flat.pop(k, None)
    for other, other_flat in seen.items():
      differ = workdir_lib.config_changes(other_flat, flat)
      if differ:
        raise LotteryError(
            f"records: the runs in {other!r} and {where!r} differ in more "
            f"than their seeds ({differ}): they are not replicates; table "
            f"them one by one")
    seen[where] = flat
    for r in recs:
      i = r.get("seed") or 0
      key = (tuple(r.get(k) for k in by), seeds["seeds.init"] + i,
             seeds["seeds.data"] + i)
      other = first_of.setdefault(key, where)
      if other != where:
        raise LotteryError(
            f"records: {r['ticket']!r} of {where!r} and its like in {other!r} "
            f"are the same replicate (seeds init {key[1]}, data {key[2]}), "
            f"not two: give runs of other seeds")


def _check_args(fn: str, workdir: Any, records: Any = ()) -> None:
  """Refuses arguments in another order than fn(workdir, records, ...)."""
  if not isinstance(workdir, (str, os.PathLike)):
    raise LotteryError(f"workdir: {fn}(workdir, records, ...) takes the run's "
                       f"workdir first (got {type(workdir).__name__})")
  if isinstance(records, (str, os.PathLike, dict)):
    raise LotteryError(f"records: {fn}(workdir, records, ...) takes a list of "
                       f"records second (got {type(records).__name__})")


def _run_of(workdir: str | os.PathLike, record: Record) -> str | os.PathLike:
  """The workdir a record's ticket is in: its own (`lottery.records` writes
  it in every record, so records of several runs combine), else `workdir`."""
  return record.get("workdir", workdir)


def ticket_metrics(workdir: str | os.PathLike, record: Record) -> dict:
  """A ticket's metrics.json (history and per-layer densities included),
  read without its arrays, from the record's own workdir (`workdir` for a
  record that names none)."""
  _check_args("ticket_metrics", workdir)
  where = _run_of(workdir, record)
  return checkpoint.read_json(
      pathlib.Path(where) / record["ticket"] / tickets.METRICS,
      unverified_ok=checkpoint.predates_checksums(where))


def layer_table(workdir: str | os.PathLike, records: Iterable[Record], *,
                kind: str = "ticket") -> list[dict]:
  """Per-layer densities of `kind` per round, averaged over replicates
  (records of several runs, replicates of one config as `table` checks,
  each read from their own workdir).

  Returns:
    [{'round', 'density', 'layers': {path: fraction kept}}, ...] by round.
  """
  _check_args("layer_table", workdir, records)
  records = replicates(records)
  _check_replicate_runs(records, ("round", "kind"))
  rounds: dict[int, list[dict]] = {}
  for r in records:
    if r.get("kind") == kind and "round" in r:
      rounds.setdefault(r["round"], []).append(ticket_metrics(workdir, r))
  rows = []
  for rnd in sorted(rounds):
    ms = rounds[rnd]
    names = list(ms[0]["layer_densities"])
    rows.append({
        "round": rnd, "density": mean_std([m["density"] for m in ms])[0],
        "layers": {k: mean_std([m["layer_densities"][k] for m in ms])[0]
                   for k in names}})
  return rows


def _kept(a, b) -> tuple[list[np.ndarray], list[np.ndarray]]:
  """Two masks' leaves, paired by parameter path, over the parameters both
  prune (a None leaf is not prunable: masks of methods with other
  `pruning.prunable` fields compare on the weights they share).

  Raises:
    LotteryError: for masks of other parameter paths or shapes.
  """
  fa, fb = masks_lib.named_leaves(a), masks_lib.named_leaves(b)
  if set(fa) != set(fb):
    only = masks_lib.differing(sorted(set(fa) - set(fb)),
                               sorted(set(fb) - set(fa)),
                               ("only in the first:", "only in the second:"))
    raise LotteryError(
        f"mask: the two masks are of different parameters ({only})")
  la, lb = [], []
  for k, x in fa.items():
    y = fb[k]
    if x is None or y is None:
      continue
    if np.shape(x) != np.shape(y):
      raise LotteryError(f"mask: {k} has shape {np.shape(x)} in the first "
                         f"mask and {np.shape(y)} in the second")
    la.append(np.asarray(x, bool).ravel())
    lb.append(np.asarray(y, bool).ravel())
  return la, lb


def overlap(a: Any, b: Any) -> float:
  """Fraction of the weights `a` keeps that `b` keeps too, over the
  parameters both masks prune (leaves paired by path); 1.0 when `a`'s kept
  weights are a subset of `b`'s."""
  la, lb = _kept(a, b)
  kept = sum(int(x.sum()) for x in la)
  return sum(int((x & y).sum()) for x, y in zip(la, lb)) / kept


def jaccard(a: Any, b: Any) -> float:
  """|a and b| / |a or b| over the parameters both masks prune (leaves
  paired by path)."""
  la, lb = _kept(a, b)
  both = sum(int((x & y).sum()) for x, y in zip(la, lb))
  either = sum(int((x | y).sum()) for x, y in zip(la, lb))
  return both / either


def _layer_counts(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray,
                                               np.ndarray]:
  """Per shared prunable leaf: its size and the two masks' kept counts."""
  la, lb = _kept(a, b)
  return (np.array([x.size for x in la], np.float64),
          np.array([x.sum() for x in la], np.float64),
          np.array([y.sum() for y in lb], np.float64))


def chance_overlap(a: Any, b: Any) -> float:
  """The `overlap` of `a` with a random mask of `b`'s per-layer densities
  (its kept weights at random positions in each layer), in expectation:
  sum_l a_l d_l / sum_l a_l, with a_l the weights `a` keeps in layer l and
  d_l `b`'s density there. The density when every layer has one density;
  above it when layers differ (a global or ERK mask). random_prune's
  control is such a mask of the ticket's own densities."""
  n, ka, kb = _layer_counts(a, b)
  return float((ka * kb / n).sum() / ka.sum())


def chance_jaccard(a: Any, b: Any) -> float:
  """The `jaccard` of two independent random masks of `a`'s and `b`'s
  per-layer counts (kept weights at random positions in each layer), to
  first order: sum_l E|a_l and b_l| / sum_l E|a_l or b_l|, with
  E|a_l and b_l| = a_l b_l / n_l. d / (2 - d) when both masks have one
  density d in every layer; above it when layers differ."""
  n, ka, kb = _layer_counts(a, b)
  both = ka * kb / n
  return float(both.sum() / (ka + kb - both).sum())


def overlap_table(workdir: str | os.PathLike,
                  records: Iterable[Record]) -> list[dict]:
  """How each round's ticket mask compares with the previous round's, and
  with its random_prune control where it has one, per replicate.

  Returns:
    [{'round', 'kind': 'ticket', 'seed', 'ticket', 'density',
    'kept_from_previous', 'jaccard_previous', 'overlap_random_prune'}, ...]
    for every round > 0 whose previous round is finished, by round:
    kept_from_previous = overlap(mask_r, mask_{r-1}) (1.0 when pruned weights
    stay pruned), jaccard_previous = jaccard(mask_r, mask_{r-1}),
    overlap_random_prune = overlap(mask_r, random_prune's mask) and
    chance_random_prune = chance_overlap(mask_r, random_prune's mask), what
    a random mask of its per-layer densities keeps in expectation (both
    absent without that control). 'seed' is the record's (None where it
    has none); 'ticket' and 'workdir' are round r's, so
    `table(rows, field, by=('round',))` gives the mean and std over
    replicates. Records of several runs are each read from their own
    workdir and compared within their run.
  """
  _check_args("overlap_table", workdir, records)
  recs = replicates(records)
  run = lambda r: os.fspath(_run_of(workdir, r))
  by = {(run(r), r.get("round"), r.get("kind"), r.get("seed")): r
        for r in recs}
  cache: dict[tuple[str, str], Any] = {}

  def mask(r):
    key = (run(r), r["ticket"])
    if key not in cache:
      cache[key] = tickets.read_ticket(*key).mask
    return cache[key]

  rows = []
  for r in sorted((r for r in recs if r.get("kind") == "ticket"
                   and r.get("round")),
                  key=lambda r: (r["round"], run(r), str(r.get("seed")))):
    prev = by.get((run(r), r["round"] - 1, "ticket", r.get("seed")))
    if prev is None:
      continue
    rand = by.get((run(r), r["round"], "random_prune", r.get("seed")))
    m = mask(r)
    row = {"round": r["round"], "kind": "ticket", "seed": r.get("seed"),
           "ticket": r["ticket"], "workdir": run(r), "density": r["density"],
           "kept_from_previous": overlap(m, mask(prev)),
           "jaccard_previous": jaccard(m, mask(prev))}
    if rand is not None:
      row["overlap_random_prune"] = overlap(m, mask(rand))
      row["chance_random_prune"] = chance_overlap(m, mask(rand))
    rows.append(row)
  return rows


# A ticket's history names its test metrics 'accuracy' and 'loss'; its
# records and summary.json 'test_accuracy' and 'test_loss'. Either works.
_HISTORY_NAMES = {"test_accuracy": "accuracy", "test_loss": "loss"}


def curve(workdir: str | os.PathLike, records: Iterable[Record],
          key: str = "accuracy") -> dict:
  """A learning curve averaged over replicates.

  Args:
    workdir: the run's workdir (records of other runs are read from their
      own).
    records: the replicates of one (round, kind), or of one group of
      another method's coordinates (of several runs: replicates of one
      config, as `table` checks).
    key: a history field: 'accuracy' (or 'test_accuracy'), 'loss' (or
      'test_loss'), 'train_loss', 'val_loss', 'val_accuracy'.

  Returns:
    {'step': [...], 'mean': [...], 'std': [...]} over the evaluation steps
    that every replicate has (empty lists for tickets without a history).

  Raises:
    LotteryError: if two records are of one replicate (the records of
      several groups), or the histories have entries but none has `key`.
  """
  _check_args("curve", workdir, records)
  records = list(records)
  _check_replicate_runs(records, ("round", "kind"))
  differ = _same_replicate_twice(records)
  if differ is not None:
    raise LotteryError(
        f"records: two of them are of one replicate and differ in {differ}: "
        f"a curve averages the replicates of one group; select one value of "
        f"{differ}")
  field = _HISTORY_NAMES.get(key, key)
  histories = [ticket_metrics(workdir, r).get("history", [])
               for r in records]
  fields = {k for h in histories for e in h for k in e} - {"step"}
  if fields and field not in fields:
    raise LotteryError(f"key: the tickets' histories have no {key!r}; they "
                       f"have {sorted(fields)}")
  hists = [{e["step"]: e[field] for e in h if field in e} for h in histories]
  steps = sorted(set.intersection(*map(set, hists))) if hists else []
  stats = [mean_std([h[s] for h in hists]) for s in steps]
  return {"step": steps, "mean": [m for m, _ in stats],
          "std": [s for _, s in stats]}

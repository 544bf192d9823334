"""The ticket store: every training run of every method, with coordinates.

A run's workdir holds one directory per training run (a ticket): its arrays
(orbax) and its metrics.json, written last, which marks it finished. Each
ticket has coordinates -- for IMP {'round': 3, 'kind': 'ticket'} (kind:
'ticket' or a control's name); other methods add theirs (method,
target_density, seed, ...) -- stored in its metrics.json and in its record in
summary.json, beside `ticket`, its directory relative to the workdir.

  <workdir>/config.json                      the resolved config
  <workdir>/summary.json                     the records of finished runs
  <workdir>/rounds/round_003/ticket/         IMP round 3's ticket:
      arrays/   orbax: mask, rewind_params, trained_params, model states
      metrics.json                           written last: marks it finished
  <workdir>/rounds/round_003/reinit/         its controls, same layout
  <ticket>/initial_mask/                     optional: the mask training
                                             started from, for methods that
                                             change the mask (sparse training)
  <workdir>/progress/                        the run in flight (resumable)
  <workdir>/tensorboard/                     TensorBoard event files

`load_ticket(workdir, **coords)` loads the ticket whose coordinates match;
`records(workdir)` lists every record, for notebooks.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
from typing import Any

import numpy as np

from lottery import checkpoint
from lottery import masks as masks_lib
from lottery import runs
from lottery import workdir as workdir_lib
from lottery.errors import LotteryError

METRICS = "metrics.json"
INITIAL_MASK = "initial_mask"
SUMMARY = "summary.json"


@checkpoint.register_remedy
def _ticket_remedy(path: pathlib.Path) -> str | None:
  """A ticket's arrays/ and metrics.json are rewritten with its directory
  (so is its initial_mask/, written before the ticket)."""
  if path.name in ("arrays", METRICS, INITIAL_MASK):
    return f"delete {os.fspath(path.parent)!r} (that ticket's directory)"
  return None


# Coordinates derived from another (`register_alias`): {name: (source,
# function of the source's value)}.
_ALIASES: dict[str, tuple[str, Any]] = {}


def register_alias(name: str, source: str, value: Any) -> None:
  """Every record (`records`, and so `find` and `load_ticket`) with
  coordinate `source` and without `name` gets `name` = `value(its source
  value)`: one idea under one name across methods (pruning at init's
  `check` is the control `kind` of IMP: 'ticket' for the method itself,
  else the check), whatever the workdir's age. What a run writes is left
  as it is."""
  _ALIASES[name] = (source, value)


def _with_aliases(coords: dict) -> dict:
  extra = {name: fn(coords[src]) for name, (src, fn) in _ALIASES.items()
           if src in coords and name not in coords}
  return {**coords, **extra} if extra else coords


@dataclasses.dataclass
class Ticket:
  """One training run: a ticket, a control, or any method's trained network.

  Attributes:
    coords: where it sits in its experiment, e.g. {'round': 3,
      'kind': 'ticket'}.
    mask: the mask pytree (bool arrays; None for non-prunable leaves); for
      methods that change the mask in training, the final mask.
    rewind_params: the weights training started from (masked).
    trained_params: the weights at the end of training.
    metrics: at least 'density' and 'test_accuracy'; also 'test_loss',
      'layer_densities', 'history' (test metrics every eval_every steps), ...
    model_state: the model's state at the end of training (e.g.
      {'batch_stats': ...}); {} for models without state. Never pruned.
    rewind_model_state: the model state training started from.
    initial_mask: for methods that change the mask in training, the mask
      training started from (`mask` is the final one); None otherwise.
  """
  coords: dict
  mask: Any
  rewind_params: Any
  trained_params: Any
  metrics: dict
  model_state: Any = dataclasses.field(default_factory=dict)
  rewind_model_state: Any = dataclasses.field(default_factory=dict)
  initial_mask: Any = None

  @property
  def round(self) -> int | None:
    return self.coords.get("round")

  @property
  def kind(self) -> str | None:
    return self.coords.get("kind")


def replica_path(directory: str, coords: dict, *, bare: bool = False) -> str:
  """A job's ticket directory, relative to the workdir: its group's
  `directory`, then '<name>_<value>' per coordinate of the job beside its
  group's (`seed_2`, `seed_0/copy_1`): the one seed format of every method.
  `bare`: the group's directory itself (an IMP run of one replicate)."""
  if bare:
    return directory
  return "/".join([directory, *(f"{k}_{v}" for k, v in coords.items())])


def ticket_path(directory: str, seed: int, replicates: int,
                seed_dir_when_single: bool = True) -> str:
  """Replicate `seed`'s ticket directory of a group (`replica_path`)."""
  return replica_path(directory, {"seed": seed},
                      bare=replicates == 1 and not seed_dir_when_single)


def imp_path(round_: int, kind: str = "ticket", seed: int | None = None
             ) -> str:
  """The ticket directory of IMP round `round_`'s `kind`, relative; with
  `seed`, that replicate's (runs of several replicates)."""
  path = f"rounds/round_{round_:03d}/{kind}"
  return path if seed is None else ticket_path(path, seed, 2)


def is_finished(workdir, path: str) -> bool:
  """Whether the ticket at `path` (relative to `workdir`) is finished
  (written, should its writes be queued: `checkpoint.background_writes`)."""
  return checkpoint.exists(pathlib.Path(workdir) / path / METRICS)


def drop_none(tree):
  """A pytree without its None leaves (and without subtrees left empty)."""
  if isinstance(tree, dict):
    out = {k: drop_none(v) for k, v in tree.items() if v is not None}
    return {k: v for k, v in out.items() if not (isinstance(v, dict) and not v)}
  return tree


def _mask_like(saved: dict, params: Any) -> Any:
  """Rebuilds a mask (None where not prunable) over `params`' structure."""
  if isinstance(params, dict):
    return {k: _mask_like(saved.get(k, {}) if isinstance(saved, dict) else {},
                          v) for k, v in params.items()}
  return None if isinstance(saved, dict) else saved


def save_initial_mask(workdir, path: str, mask: Any) -> None:
  """Writes the mask a run starts from beside its ticket (`<ticket>/
  initial_mask`); `read_ticket` loads it as `Ticket.initial_mask`. Write it
  before the ticket: a finished ticket then always has it."""
  if not checkpoint.is_writer():
    return
  d = pathlib.Path(workdir) / path / INITIAL_MASK
  (d.parent / METRICS).unlink(missing_ok=True)  # Unfinished until saved.
  checkpoint.remove(d)
  checkpoint.save(d, drop_none(mask))


def save_ticket(workdir, path: str, ticket: Ticket) -> None:
  """Writes a ticket to `workdir/path`; its metrics.json, written last, marks
  it finished. The metrics carry the coordinates."""
  if not checkpoint.is_writer():
    return
  d = pathlib.Path(workdir) / path
  d.mkdir(parents=True, exist_ok=True)
  # A ticket written again (a resumed group's replicates are all saved
  # again) is unfinished until its metrics.json is back: an interruption
  # leaves no finished marker beside missing arrays.
  (d / METRICS).unlink(missing_ok=True)
  if ticket.initial_mask is not None:
    save_initial_mask(workdir, path, ticket.initial_mask)
  # A crash between the two writes leaves arrays without metrics: redo them.
  checkpoint.remove(d / "arrays")
  checkpoint.save(d / "arrays", drop_none({
      "mask": drop_none(ticket.mask),
      "rewind_params": ticket.rewind_params,
      "trained_params": ticket.trained_params,
      "model_state": ticket.model_state,
      "rewind_model_state": ticket.rewind_model_state}))
  checkpoint.write_json(d / METRICS, {**ticket.metrics,
                                      "coords": ticket.coords})


def read_ticket(workdir, path: str, *, like: Any = None) -> Ticket:
  """Loads the finished ticket at `path` (relative to `workdir`)."""
  d = pathlib.Path(workdir) / path
  checkpoint.wait_for(d)
  if not (d / METRICS).exists():
    raise LotteryError(f"ticket: no finished ticket at {os.fspath(d)!r}")
  arrays = checkpoint.restore(d / "arrays")
  metrics = _read(workdir, d / METRICS)
  coords = metrics.pop("coords", {})
  trained = arrays["trained_params"]
  mask = _mask_like(arrays.get("mask", {}), trained)
  ticket = Ticket(coords, mask, arrays["rewind_params"], trained, metrics,
                  arrays.get("model_state", {}),
                  arrays.get("rewind_model_state", {}))
  if (d / INITIAL_MASK).exists():
    ticket.initial_mask = _mask_like(checkpoint.restore(d / INITIAL_MASK),
                                     trained)
  if like is not None:
    masks_lib.check_compatible(mask, like, what="ticket")
  return ticket


def _read(workdir, path: pathlib.Path) -> Any:
  """A JSON file of `workdir`, verified (`checkpoint.read_json`; without a
  checksum only in a workdir written before files had them)."""
  return checkpoint.read_json(
      path, unverified_ok=checkpoint.predates_checksums(workdir))


def _walk_records(node, out: list) -> None:
  """Collects every dict holding a 'ticket' key, depth first, in order."""
  if isinstance(node, dict):
    if "ticket" in node:
      out.append({k: v for k, v in node.items()
                  if not isinstance(v, (dict, list)) or k == "coords"})
    # A record's own replicates first, then what nests under it (controls).
    for k in sorted(node, key=lambda k: k != "seeds"):
      _walk_records(node[k], out)
  elif isinstance(node, list):
    for v in node:
      _walk_records(v, out)


def summary(workdir) -> dict:
  """The run's summary.json as a dict."""
  path = pathlib.Path(workdir) / SUMMARY
  checkpoint.wait_for(path)
  if not path.exists():
    raise LotteryError(f"workdir: {os.fspath(workdir)!r} holds no finished "
                       f"record ({SUMMARY} missing)")
  return _read(workdir, path)


def records(workdir) -> list[dict]:
  """Every ticket record of a run, flat, one per ticket: its coordinates
  (with `seed`, the replicate, where the run records it), its metrics
  (scalars), `ticket`, its directory relative to the workdir, and
  `workdir`, the run's (absolute), so that the records of several workdirs
  combine (`records(a) + records(b)`). Aggregates
  over replicates (IMP's round records: mean and std) stay in summary.json.

  Records come from summary.json (nested records, such as IMP's controls
  under their round, are listed after their parent); tickets finished but
  not yet summarised (a run in flight) are added from their metrics.json.

  Raises:
    TypeError: if `workdir` is not a path; LotteryError if it is not a
      run's directory.
  """
  runs.run_dir(workdir)
  checkpoint.wait_for(workdir)
  walked: list[dict] = []
  path = pathlib.Path(workdir) / SUMMARY
  if path.exists():
    _walk_records(_read(workdir, path), walked)
  # An aggregate of replicates (IMP's round records) names replicate 0's
  # ticket: keep the replicate's own record.
  seeded = {r["ticket"] for r in walked if "seed" in r}
  out = [r for r in walked if "seed" in r or r["ticket"] not in seeded]
  for r in out:
    _check_record(workdir, r)
  seen = {r["ticket"] for r in out}
  root = pathlib.Path(workdir)
  # Another run's workdir inside this one (refused for new runs; one moved
  # there) holds tickets of its own.
  nested = [c.parent.relative_to(root).as_posix() + "/"
            for c in root.glob(f"*/**/{workdir_lib.CONFIG_FILE}")
            if workdir_lib.holds_run(c.parent)]
  for m in sorted(root.glob(f"**/{METRICS}")):
    rel = m.parent.relative_to(root).as_posix()
    if (rel in seen or rel.startswith("progress") or
        any((rel + "/").startswith(n) for n in nested)):
      continue
    metrics = _read(workdir, m)
    coords = metrics.get("coords", {})
    out.append({**coords, **{k: v for k, v in metrics.items()
                             if not isinstance(v, (dict, list))},
                "ticket": rel})
  where = os.fspath(root.resolve())
  return [{**_with_aliases(r), "workdir": where} for r in out]


def _check_record(workdir, record: dict) -> None:
  """Refuses a summary.json record that disagrees with its ticket's
  (verified) metrics.json: its coordinates or a scalar metric differ, or it
  names no finished ticket. summary.json is rewritten from the tickets by a
  rerun, so its remedy is to delete it."""
  path = pathlib.Path(workdir) / SUMMARY
  rel = record["ticket"]
  metrics_path = pathlib.Path(workdir) / str(rel) / METRICS
  if not isinstance(rel, str) or not metrics_path.is_file():
    raise checkpoint.damaged_file(
        path, f"it names {rel!r}, which holds no finished ticket")
  metrics = _read(workdir, metrics_path)
  coords = metrics.get("coords", {})
  theirs = {**{k: v for k, v in metrics.items()
               if not isinstance(v, (dict, list))}, **coords}
  for k, v in record.items():
    if k in theirs and not isinstance(v, (dict, list)) and v != theirs[k]:
      raise checkpoint.damaged_file(
          path, f"its record of {rel!r} has {k}={v!r}, its "
          f"{METRICS} {theirs[k]!r}")


def _same(key: str, value: Any, asked: Any) -> bool:
  """Whether a record's `value` of `key` matches the `asked` one: a measured
  density matches at the 4 decimals the progress lines print it with; a
  smaller one at the asked value's digits, up to 4 significant ones
  (density=0.3276 finds 0.32760975..., 0.125 finds 0.12499547..., 0.8**8
  finds 0.16777315..., 0.000133 finds 0.00013297... and not 0.00010638...;
  0.2 does not find 0.24999); any other value matches itself."""
  if (key == "density" and isinstance(asked, (float, np.floating)) and
      isinstance(value, float)):
    # The shortest digits of the asked value's own type (np.float32 too).
    text = np.format_float_positional(asked)
    places = len(text.partition(".")[2])
    if float(text) and math.isfinite(float(text)):
      places = min(places, 3 - math.floor(math.log10(abs(float(text)))))
    places = max(4, places)
    return round(value, places) == round(float(text), places)
  return value == asked


def _matching(recs: list[dict], coords: dict) -> list[dict]:
  """The records whose values equal `coords`, or where none do, those whose
  density matches the asked one as printed (`_same`)."""
  exact = [r for r in recs if all(r.get(k) == v for k, v in coords.items())]
  return exact or [r for r in recs
                   if all(_same(k, r.get(k), v) for k, v in coords.items())]


def find(workdir, **coords) -> dict:
  """The one record whose coordinates match `coords` (LotteryError if none
  or several match); without `seed`, replicate 0's where several
  replicates match; without `kind` or `check`, the method's own ticket
  (kind 'ticket') where its controls or sanity checks match too. A
  `density` no ticket has exactly matches it as printed (`_same`)."""
  runs.run_dir(workdir)
  recs = records(workdir)
  unknown = [k for k in coords if recs and not any(k in r for r in recs)]
  if unknown:
    raise LotteryError(f"{unknown[0]}: no ticket of {os.fspath(workdir)!r} "
                       f"has that coordinate; it has "
                       f"{_coordinates(recs, {})}")
  matches = _matching(recs, coords)
  if ("kind" not in coords and "check" not in coords and
      len({r["ticket"] for r in matches}) > 1):
    matches = [r for r in matches if r.get("kind") == "ticket"] or matches
  if "seed" not in coords and len({r["ticket"] for r in matches}) > 1:
    # Replicates: the default is replicate 0.
    matches = [r for r in matches if r.get("seed") == 0] or matches
  if not matches:
    # The field at fault: the first whose value no ticket matching the
    # others has (kind='random' of round 3, not the round).
    field = next((k for k in coords
                  if _matching(recs, {a: v for a, v in coords.items()
                                      if a != k})), next(iter(coords)))
    raise LotteryError(f"{field}: no finished ticket with {coords} in "
                       f"{os.fspath(workdir)!r}; it has "
                       f"{_coordinates(recs, coords)}")
  if len({r["ticket"] for r in matches}) > 1:
    found = sorted({r["ticket"] for r in matches})
    raise LotteryError(f"ticket: {coords} matches {len(found)} tickets "
                       f"({found[:4]}...); give more coordinates")
  return matches[0]


# The coordinates the methods give their tickets, listed in errors: IMP's,
# pruning at init's and sparse training's, then the stability analysis's.
COORDINATES = ("round", "kind", "method", "check", "target_density",
               "distribution", "source", "k", "copy", "seed")


def _coordinates(recs: list[dict], asked: dict) -> str:
  """The values each asked coordinate takes in `recs`, for an error."""
  if not recs:
    return "no finished ticket yet"
  parts = []
  # A plug-in method's own coordinates (a 'stage'), as its tickets record
  # them.
  first = recs[0]
  own = _read(first["workdir"], pathlib.Path(first["workdir"]) /
              first["ticket"] / METRICS).get("coords", {})
  for k in dict.fromkeys([*asked, *COORDINATES, *own]):
    # An asked coordinate's values among the tickets that match the other
    # asked ones, where some do (the rounds that have a 'reinit' control).
    others = {a: v for a, v in asked.items() if a != k}
    among = _matching(recs, others) if k in asked and others else []
    values = sorted({r[k] for r in (among or recs) if k in r}, key=_order)
    if values:
      where = ", ".join(f"{a}={v!r}" for a, v in others.items())
      parts.append(f"{k} in {_values(values)}" +
                   (f" where {where}" if among else ""))
  return "; ".join(parts) or "tickets without coordinates"


def _order(v) -> tuple:
  """Numbers by value, then everything else by repr."""
  number = isinstance(v, (int, float)) and not isinstance(v, bool)
  return (0, v, "") if number else (1, 0, repr(v))


def _values(values: list) -> str:
  """'[0..32]' for a run of consecutive integers, else up to 12 values."""
  if (len(values) > 3 and all(type(v) is int for v in values) and
      values[-1] - values[0] == len(values) - 1):
    return f"[{values[0]}..{values[-1]}]"
  shown = ", ".join(map(repr, values[:12]))
  return f"[{shown}{', ...' if len(values) > 12 else ''}]"


def load_ticket(workdir: str | os.PathLike, round: int | None = None,  # pylint: disable=redefined-builtin
                kind: str | None = None, *, like: Any = None,
                **coords) -> Ticket:
  """Loads a finished ticket of a run by its coordinates.

  `load_ticket(workdir, 3)` is IMP round 3's ticket, `load_ticket(workdir, 3,
  'reinit')` its reinit control, `load_ticket(workdir, 3, seed=2)` replicate
  2's ticket (default: replicate 0); any method's coordinates work as
  keywords (`load_ticket(workdir, method='snip', target_density=0.1)`).

  Args:
    workdir: the run's workdir.
    round: the IMP round (0 = dense); an integer.
    kind: 'ticket', or a control's or sanity check's name; with `round`
      it defaults to 'ticket', without it only a given kind is matched (a
      plug-in's coordinates alone pick its tickets, a dense one too).
    like: optional params of the model the ticket is meant for; a ticket of
      other parameter names or shapes raises LotteryError.
    **coords: other coordinates to match.

  Returns:
    A `Ticket` with numpy arrays.
  """
  if round is not None:
    if isinstance(round, bool) or not isinstance(round, int):
      raise LotteryError(f"round: must be an integer (got {round!r})")
    coords["round"] = round
    coords.setdefault("kind", kind or "ticket")
  elif kind is not None:
    coords["kind"] = kind
  if not coords:
    raise LotteryError("ticket: give coordinates, e.g. load_ticket(workdir, "
                       "round=3) or load_ticket(workdir, method='snip', ...)")
  rec = find(workdir, **coords)
  ticket = read_ticket(workdir, rec["ticket"], like=like)
  wrong = {k: ticket.coords.get(k) for k, v in coords.items()
           if k in ticket.coords and ticket.coords[k] != v}
  if wrong:  # A ticket moved or a record damaged: never the wrong one.
    raise LotteryError(f"ticket: {os.fspath(workdir)!r}'s record for "
                       f"{coords} names {rec['ticket']!r}, whose coordinates "
                       f"are {ticket.coords}; delete {SUMMARY} and rerun the "
                       f"same command")
  return ticket


def finished_rounds(workdir) -> list[int]:
  """IMP rounds whose ticket is finished, in order."""
  return sorted({r["round"] for r in records(workdir)
                 if r.get("kind") == "ticket" and "round" in r})

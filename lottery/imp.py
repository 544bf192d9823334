"""Iterative magnitude pruning with rewinding, and its controls: a thin driver
of jobs.

Round 0 trains the dense network. Each later round scores the previous
round's trained weights, prunes `pruning.fraction` of the surviving prunable
weights (`lottery.prune`), resets the rest (a reset policy) and trains again:

  rewind     weights (and model state) back to step k = `pruning.rewind_step`
             of round 0 (k = 0: initialization, Frankle & Carbin 2019; k > 0:
             Frankle et al. 2020), then steps k..T of the schedule;
  lr_rewind  keep the trained weights, replay the whole schedule (Renda et al.
             2020);
  finetune   keep the trained weights, train T steps at the final rate.

Under a constant schedule lr_rewind and finetune are the same procedure.

Beside each pruned round's ticket the controls in `config.controls` (see
`lottery.controls`) run from the same config and train exactly like the ticket.

Resume order: a run is a sequence of jobs (round 0 ticket, round 1 ticket,
round 1 reinit, round 1 random_prune, round 2 ticket, ...); see
`lottery.jobs`. summary.json is rewritten after every round.
"""

from __future__ import annotations

import dataclasses
import os
from fractions import Fraction
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

from lottery import checkpoint
from lottery import controls as controls_lib
from lottery import jobs as jobs_lib
from lottery import loop as loop_lib
from lottery import pruning
from lottery import rng
from lottery import scores as scores_lib
from lottery import tickets
from lottery.experiment import Experiment
from lottery.experiment import build
from lottery.experiment import prepared
from lottery.progress import NullProgress

__all__ = ["RESETS", "build", "run", "summary"]

REWIND_POINT = "rewind_point"


@dataclasses.dataclass(frozen=True)
class Reset:
  """How a pruned round starts: weights, model state, first step, rates."""
  params: Any
  model_state: Any
  start_step: int
  lr_fn: Callable[[int, int], np.ndarray]


def round_rate(schedule: str, rate: float, r: int) -> float:
  """The fraction of the survivors that round r >= 1 removes.

  'geometric': `rate` every round (density (1 - rate)^r). 'linear': sparsity
  rises by `rate` of all the prunable weights per round (density 1 - r *
  rate), so round r removes rate / (1 - (r - 1) * rate) of the survivors; with
  the one rounding rule each layer's count is within a weight per round of
  the exact target.
  """
  if schedule == "geometric":
    return rate
  return float(Fraction(repr(rate)) / (1 - (r - 1) * Fraction(repr(rate))))


def _rewind(exp: Experiment, prev: tickets.Ticket, rewind) -> Reset:
  del prev
  params, model_state = rewind
  return Reset(params, model_state, exp.config.pruning.rewind_step,
               exp.learning_rates)


def _lr_rewind(exp: Experiment, prev: tickets.Ticket, rewind) -> Reset:
  del rewind
  return Reset(prev.trained_params, prev.model_state, 0, exp.learning_rates)


def _finetune(exp: Experiment, prev: tickets.Ticket, rewind) -> Reset:
  del rewind
  final = float(exp.schedule(exp.config.training.steps - 1))
  return Reset(prev.trained_params, prev.model_state, 0,
               lambda a, b: np.full(b - a, final, np.float32))


# Reset policies by name: (experiment, previous ticket, (rewind params,
# rewind model state)) -> Reset.
RESETS: dict[str, Callable[..., Reset]] = {
    "rewind": _rewind, "lr_rewind": _lr_rewind, "finetune": _finetune}


def _record(t: tickets.Ticket, path: str) -> dict:
  keep = ("density", "test_accuracy", "test_loss", "train_loss", "time_s")
  keep += tuple(k for k in ("early_stop_step", "early_stop_test_accuracy")
                if k in t.metrics)
  return {**t.coords, **{k: t.metrics[k] for k in keep}, "ticket": path}


def _summary_scalars(writer, rec: dict) -> None:
  """Per-round scalars (the 'summary' TensorBoard run)."""
  if writer is None:
    return
  writer.add_scalar("density", rec["density"], rec["round"])
  writer.add_scalar("ticket_test_accuracy", rec["test_accuracy"], rec["round"])
  for k, c in rec.get("controls", {}).items():
    writer.add_scalar(f"{k}_test_accuracy", c["test_accuracy"], rec["round"])
  writer.flush()


def summary(workdir) -> dict:
  """The run's summary.json as a dict ({'rounds': [...], 'finished': bool})."""
  return tickets.summary(workdir)


def run(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
        progress=None, log: Callable[[str], None] | None = None,
        log_steps: bool = False,
        on_round: Callable[[dict], None] | None = None) -> dict:
  """Runs (or resumes) an IMP experiment; returns its summary.

  Args:
    config: a config from `lottery.config.base_config()` or configs/.
    workdir: where everything is written; a workdir of an unfinished run
      of the same config is resumed, one of another config is refused.
    progress: a `lottery.progress.Progress`; default: none shown.
    log: receives the per-round lines when no `progress` is given.
    log_steps: also log the test metrics of every evaluation.
    on_round: called with each round's summary record once it is finished.

  Returns:
    {'rounds': [{'round', 'kind', 'ticket', 'density', 'test_accuracy',
    'test_loss', 'train_loss', 'time_s', 'controls': {name: {...}}}, ...],
    'finished': True}, also written to <workdir>/summary.json. Every record
    (controls too) carries its coordinates and `ticket`, its directory.
  """
  if progress is None:
    progress = NullProgress(log)
  with prepared(config, workdir, progress) as (exp, wd):
    # Every round's record is rebuilt (finished ones loaded), so the summary
    # run is rewritten from round 0: purge_step=0 leaves no duplicates.
    writer = jobs_lib.tensorboard_writer(wd, "summary", 0)
    try:
      return _rounds(config, exp, wd, progress, writer, log_steps, on_round)
    finally:
      if writer is not None:
        writer.close()


def _aggregate(ts: list[tickets.Ticket], paths: list[str]) -> dict:
  """A group's record: its replicates' records under 'seeds', and the mean
  (std for test accuracy) of their metrics; `ticket` is replicate 0's."""
  seeds = [_record(t, p) for t, p in zip(ts, paths)]
  rec = {k: v for k, v in seeds[0].items() if k != "seed"}
  for k in ("density", "test_accuracy", "test_loss", "train_loss",
            "early_stop_step", "early_stop_test_accuracy"):
    if k in rec:
      rec[k] = float(np.mean([_nan(s[k]) for s in seeds]))
  rec["test_accuracy_std"] = float(np.std([_nan(s["test_accuracy"])
                                           for s in seeds]))
  rec["time_s"] = max(s["time_s"] for s in seeds)
  rec["seeds"] = seeds
  return rec


def _nan(v) -> float:
  return np.nan if v is None else v


def _accuracy(rec: dict) -> str:
  if len(rec["seeds"]) == 1:
    return f"{rec['test_accuracy']:.4f}"
  return f"{rec['test_accuracy']:.4f} ± {rec['test_accuracy_std']:.4f}"


def _prune(config, exp: Experiment, score_fn, prev: list[tickets.Ticket],
           r: int) -> list[Any]:
  """Round r's masks from each replicate's previous ticket (vmapped over
  the replicates on the device when there are several)."""
  p = config.pruning
  rate = round_rate(p.schedule, p.fraction, r)
  layer_fractions = {k: round_rate(p.schedule, v, r)
                     for k, v in exp.layer_fractions.items()}

  def one(mask, params, key):
    return pruning.prune(mask, score_fn(params, key), rate, scope=p.scope,
                         layer_fractions=layer_fractions)

  keys = [rng.stream(config.seeds.control + i, "random_score", r)
          for i in range(len(prev))]
  if len(prev) == 1:
    return [one(prev[0].mask, prev[0].trained_params, keys[0])]
  stack = lambda trees: jax.tree.map(lambda *xs: np.stack(xs), *trees)
  masks = jax.device_get(jax.vmap(one)(stack([t.mask for t in prev]),
                                       stack([t.trained_params for t in prev]),
                                       jax.numpy.stack(keys)))
  return [loop_lib.unstack(masks, i) for i in range(len(prev))]


def _rounds(config, exp: Experiment, wd, progress, writer, log_steps,
            on_round) -> dict:
  """The rounds of `run`, each a ticket job and its controls' jobs, every
  job trained by `seeds.num` replicates at once."""
  p, t = config.pruning, config.training
  n = config.seeds.num
  score_fn = jax.jit(scores_lib.get(p.score))  # One program, not one a leaf.
  control_fns = {name: controls_lib.get(name) for name in config.controls}
  reset_fn = RESETS[p.reset]
  capture = p.rewind_step if p.reset == "rewind" and p.rewind_step else None
  rewinds = [exp.replicate_init(i) for i in range(n)]
  log_line = progress.line if log_steps else None
  if p.reset in ("lr_rewind", "finetune") and t.schedule == "constant":
    progress.info(f"note: pruning.reset={p.reset!r} under a constant "
                  f"schedule: lr_rewind and finetune are the same procedure")
  seed_of = (lambda i: None) if n == 1 else (lambda i: i)
  rewind_path = ((lambda i: REWIND_POINT) if n == 1 else
                 (lambda i: f"{REWIND_POINT}_seed_{i}"))
  records, prev = [], None

  def controls_due(r: int) -> bool:
    """Controls run every controls_every pruned rounds and on the last."""
    return r > 0 and (r % config.controls_every == 0 or r == p.rounds)

  def paths(r, kind):
    return [tickets.imp_path(r, kind, seed_of(i)) for i in range(n)]

  def finished(r, kind):
    return all(tickets.is_finished(wd, q) for q in paths(r, kind))

  groups = [(r, k) for r in range(p.rounds + 1)
            for k in ["ticket"] + (list(control_fns) if controls_due(r)
                                   else [])]
  progress.jobs(total=len(groups), done=sum(finished(r, k) for r, k in groups))
  for r in range(p.rounds + 1):
    t0 = time.time()
    if r == 0:
      masks = [exp.dense_mask] * n
      starts = [Reset(params, model_state, 0, exp.learning_rates)
                for params, model_state in rewinds]
    else:
      masks = _prune(config, exp, score_fn, prev, r)
      starts = [reset_fn(exp, prev[i], rewinds[i]) for i in range(n)]

    def group(kind, begins: list[controls_lib.Start], capture=None):
      return [jobs_lib.Job(
          coords={"round": r, "kind": kind, "seed": i},
          path=tickets.imp_path(r, kind, seed_of(i)), mask=s.mask,
          params=s.params, model_state=s.model_state,
          start_step=starts[i].start_step, stop=t.steps,
          lr_fn=starts[i].lr_fn, data_seed=config.seeds.data + i,
          capture=capture, capture_path=rewind_path(i))
          for i, s in enumerate(begins)]

    ticket_starts = [controls_lib.Start(m, s.params, s.model_state)
                     for m, s in zip(masks, starts)]
    ts = jobs_lib.run_replicates(
        exp, group("ticket", ticket_starts, capture if r == 0 else None), wd,
        progress=progress, log_steps=log_line)
    if r == 0 and capture is not None:
      rewinds = [jobs_lib.load_capture(wd, rewind_path(i)) for i in range(n)]
    rec = _aggregate(ts, paths(r, "ticket"))
    # Also wherever a run extended with more rounds already has them (its
    # old last round).
    with_controls = controls_due(r) or any(finished(r, name)
                                           for name in control_fns)
    if with_controls and control_fns:
      rec["controls"] = {}
      for name, fn in control_fns.items():
        cstarts = [fn(exp, ticket_starts[i],
                      rng.stream(config.seeds.control + i, name, r))
                   for i in range(n)]
        cs = jobs_lib.run_replicates(exp, group(name, cstarts), wd,
                                     progress=progress, log_steps=log_line)
        rec["controls"][name] = _aggregate(cs, paths(r, name))
      rec["time_s"] += sum(c["time_s"] for c in rec["controls"].values())
    records.append(rec)
    _summary_scalars(writer, rec)
    checkpoint.write_json(os.path.join(wd, tickets.SUMMARY),
                          {"rounds": records, "finished": r == p.rounds})
    ctl = "".join(f"  {k} {_accuracy(c)}"
                  for k, c in rec.get("controls", {}).items())
    progress.line(f"round {r:2d}/{p.rounds}  density {rec['density']:.4f}  "
                  f"ticket {_accuracy(rec)}{ctl}  "
                  f"({time.time() - t0:.1f} s)")
    if on_round:
      on_round(rec)
    prev = ts
  return {"rounds": records, "finished": True}

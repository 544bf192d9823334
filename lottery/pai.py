"""Pruning at initialization (SNIP, GraSP, SynFlow, magnitude, random) and
the sanity checks of Frankle et al. 2021: a thin driver of jobs.

For every method of `pai.methods` (a score of `lottery.scores`), target
density d of `pai.densities` and replicate i, the initial weights of
replicate i are pruned to d in n rounds (n = `pai.iterations`, or the
method's entry in `pai.method_iterations`: SynFlow 100 by default, the others
1). Round k keeps d^(k/n) of the prunable weights: it rescores the masked
network and removes the fraction 1 - d^(1/n) of the survivors with
`lottery.prune` (the one rounding rule, per round; `pai.scope` global or
layerwise), so with one round the count is exactly the one-shot count
round-half-up((1 - d) * N) removed, and with n rounds it follows the
geometric schedule within a weight per round. The n rounds run as one
compiled `lax.fori_loop` (one compilation per method and shapes, whatever n
and d). The mask is then trained from the initial weights like any ticket.

Checks (`pai.checks`), for every method but 'random' (whose shuffle, reinit
and inversion are random pruning again):

  shuffle  the method's mask permuted within each layer (the 'shuffle'
           control of `lottery.controls`): same per-layer densities;
  reinit   the method's mask on fresh weights (the 'reinit' control);
  invert   the method run with negated scores: it keeps the lowest scores.

With `pai.dense` the dense network is trained too (method 'dense', target
density 1.0). The score batch of replicate i is `pai.batch_size` training
examples drawn uniformly without replacement with key rng.stream(seeds.data +
i, 'pai_batch'); SynFlow reads only its shape.

Resume order: groups of replicate jobs -- dense, then per method and density
the method's tickets and then its checks; summary.json is rewritten after
every group.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax import lax

from lottery import checkpoint
from lottery import config as config_lib
from lottery import controls as controls_lib
from lottery import jobs as jobs_lib
from lottery import masks as masks_lib
from lottery import pruning
from lottery import rng
from lottery import scores as scores_lib
from lottery import tickets
from lottery.errors import LotteryError
from lottery.experiment import Experiment
from lottery.experiment import prepared
from lottery.progress import NullProgress

__all__ = ["iterations", "path", "prune_at_init", "run", "score_batch",
           "summary"]

DENSE = "dense"
# Checks that are controls of lottery.controls (key: rng.stream(seed, name)).
_CONTROL_CHECKS = ("shuffle", "reinit")


def iterations(config: ml_collections.ConfigDict, method: str) -> int:
  """The number of pruning rounds of `method` under `config`."""
  return config_lib.parse_method_iterations(
      config.pai.method_iterations).get(method, config.pai.iterations)


def path(method: str, target_density: float, seed: int,
         check: str | None = None) -> str:
  """The ticket directory of one run, relative to the workdir."""
  return (f"pai/{method}/{check or 'ticket'}/density_{target_density!r}/"
          f"seed_{seed}")


def score_batch(exp: Experiment, replicate: int) -> tuple[np.ndarray,
                                                           np.ndarray]:
  """The (x, y) the scores of replicate `replicate` see: `pai.batch_size`
  training examples drawn without replacement with the replicate's data
  seed (stream 'pai_batch')."""
  ds, n = exp.dataset, exp.config.pai.batch_size
  if n > len(ds.y_train):
    raise LotteryError(f"pai.batch_size: {n} exceeds the {len(ds.y_train)} "
                       f"training examples (got {n})")
  key = rng.stream(exp.config.seeds.data + replicate, "pai_batch")
  idx = np.sort(np.asarray(jax.random.choice(key, len(ds.y_train), (n,),
                                             replace=False)))
  return ds.x_train[idx], ds.y_train[idx]


@functools.partial(jax.jit, static_argnames=(
    "apply", "method", "rounds", "fraction", "scope", "invert"))
def _prune_rounds(params, model_state, mask, batch, key, *, apply, method,
                  rounds, fraction, scope, invert):
  """`rounds` rounds of score + prune at `fraction`, in one fori_loop."""
  def apply_fn(p, x):
    return apply(p, model_state, x, train=False)[0]

  def one_round(k, m):
    s = scores_lib.compute(method, apply_fn, params, m, batch,
                           jax.random.fold_in(key, k))
    if invert:
      s = jax.tree.map(jnp.negative, s)
    return pruning.prune(m, s, fraction, scope=scope)

  return lax.fori_loop(0, rounds, one_round, mask)


def prune_at_init(exp: Experiment, method: str, density: float, params: Any,
                  model_state: Any, batch: tuple, key: jax.Array, *,
                  rounds: int = 1, scope: str = "global",
                  invert: bool = False) -> masks_lib.Mask:
  """Prunes `params` (at init) to `density` with the score `method`.

  Args:
    exp: the built experiment (its model, in evaluation mode, and its
      prunable mask).
    method: a score of `lottery.scores`.
    density: target fraction of the prunable weights kept, in (0, 1).
    params, model_state: the weights and model state to score.
    batch: (x, y) for the data-aware scores.
    key: randomness of random scores (round k folds in k).
    rounds: pruning rounds; each removes 1 - density^(1/rounds) of the
      survivors after rescoring the masked network.
    scope: 'global' or 'layerwise'.
    invert: keep the lowest scores instead of the highest.

  Returns:
    The mask (bool leaves; None where not prunable).
  """
  fraction = 1.0 - density ** (1.0 / rounds) if rounds > 1 else 1.0 - density
  mask = jax.tree.map(lambda m: jnp.asarray(m, bool), exp.dense_mask)
  return jax.device_get(_prune_rounds(
      params, model_state, mask, tuple(jnp.asarray(b) for b in batch), key,
      apply=exp.apply_fn, method=method, rounds=rounds, fraction=fraction,
      scope=scope, invert=invert))


def summary(workdir) -> dict:
  """The run's summary.json ({'runs': [...], 'finished': bool})."""
  return tickets.summary(workdir)


def _record(t: tickets.Ticket, rel: str) -> dict:
  keep = ("density", "layer_densities", "test_accuracy", "test_loss",
          "train_loss", "time_s")
  keep += tuple(k for k in ("early_stop_step", "early_stop_test_accuracy")
                if k in t.metrics)
  return {**t.coords, **{k: t.metrics[k] for k in keep}, "ticket": rel}


def _group_records(config, method: str, done: list, paths: list) -> list:
  rounds = 0 if method == DENSE else iterations(config, method)
  return [{**_record(tk, q), "iterations": rounds}
          for tk, q in zip(done, paths)]


def _write_summary(wd, records: list, total: int) -> None:
  checkpoint.write_json(os.path.join(wd, tickets.SUMMARY),
                        {"runs": records, "finished": len(records) == total})


def _groups(config) -> list[tuple[str, str | None, float]]:
  """(method, check, target density) of every group, in run order."""
  p = config.pai
  out = [(DENSE, None, 1.0)] if p.dense else []
  for method in p.methods:
    for d in p.densities:
      out.append((method, None, d))
      if method != "random":
        out += [(method, check, d) for check in p.checks]
  return out


def run(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
        progress=None, log: Callable[[str], None] | None = None,
        log_steps: bool = False) -> dict:
  """Runs (or resumes) a pruning-at-initialization experiment.

  Args:
    config: a config from `lottery.base_config()` or configs/pai_*.py.
    workdir: where everything is written; a workdir of an unfinished run of
      the same config is resumed, one of another config is refused.
    progress: a `lottery.progress.Progress`; default: none shown.
    log: receives the per-group lines when no `progress` is given.
    log_steps: also log the test metrics of every evaluation.

  Returns:
    {'runs': [{'method', 'check', 'target_density', 'seed', 'density',
    'layer_densities', 'test_accuracy', 'test_loss', 'train_loss', 'time_s',
    'iterations', 'ticket'}, ...], 'finished': True}, also written to
    <workdir>/summary.json; one record per replicate. `check` is None for
    the method itself, 'dense' has target_density 1.0. Any run loads with
    `lottery.load_ticket(workdir, method=..., check=..., target_density=...,
    seed=...)`.
  """
  if progress is None:
    progress = NullProgress(log)

  def check_batches(exp):  # A batch_size above the training set is refused.
    for i in range(config.seeds.num):
      score_batch(exp, i)

  with prepared(config, workdir, progress,
                before_claim=check_batches) as (exp, wd):
    return _run_groups(config, exp, wd, progress, log_steps)


def _run_groups(config, exp: Experiment, wd, progress, log_steps) -> dict:
  p, t, n = config.pai, config.training, config.seeds.num
  groups = _groups(config)
  # Progress counts groups: each trains its n replicates at once.
  progress.jobs(total=len(groups),
                done=sum(1 for r in tickets.records(wd) if "method" in r) // n)
  starts = [exp.replicate_init(i) for i in range(n)]
  batches = [score_batch(exp, i) for i in range(n)]
  log_line = progress.line if log_steps else None
  masks: dict[tuple[str, float, bool], list] = {}

  def method_masks(method: str, d: float, invert: bool) -> list:
    """The method's masks of every replicate at density d (computed once)."""
    if (method, d, invert) not in masks:
      mi, di = p.methods.index(method), p.densities.index(d)
      masks[method, d, invert] = [prune_at_init(
          exp, method, d, starts[i][0], starts[i][1], batches[i],
          rng.stream(config.seeds.control + i, "pai_score", mi, di,
                     int(invert)),
          rounds=iterations(config, method), scope=p.scope, invert=invert)
                                  for i in range(n)]
    return masks[method, d, invert]

  records = []
  for method, check, d in groups:
    t0 = time.time()
    paths = [path(method, d, i, check) for i in range(n)]
    if all(tickets.is_finished(wd, q) for q in paths):
      # Resumed: no mask to compute (SynFlow's rounds cost seconds).
      done = [tickets.read_ticket(wd, q) for q in paths]
      records += _group_records(config, method, done, paths)
      _write_summary(wd, records, len(groups) * n)
      continue
    jobs = []
    for i in range(n):
      params, model_state = starts[i]
      if method == DENSE:
        mask = exp.dense_mask
      else:
        mask = method_masks(method, d, check == "invert")[i]
      start = controls_lib.Start(mask, params, model_state)
      if check in _CONTROL_CHECKS:
        key = rng.stream(config.seeds.control + i, check,
                         p.methods.index(method), p.densities.index(d))
        start = controls_lib.get(check)(exp, start, key)
      coords = {"method": method, "check": check, "target_density": d,
                "seed": i}
      jobs.append(jobs_lib.Job(
          coords=coords, path=path(method, d, i, check), mask=start.mask,
          params=start.params, model_state=start.model_state, start_step=0,
          stop=t.steps, lr_fn=exp.learning_rates,
          data_seed=config.seeds.data + i))
    done = jobs_lib.run_replicates(exp, jobs, wd, progress=progress,
                                   log_steps=log_line)
    recs = _group_records(config, method, done, paths)
    records += recs
    _write_summary(wd, records, len(groups) * n)
    accs = np.asarray([r["test_accuracy"] for r in recs])
    progress.line(f"{method:>9s} {check or '':7s} density "
                  f"{np.mean([r['density'] for r in recs]):.4f}  test acc "
                  f"{accs.mean():.4f}" +
                  (f" ± {accs.std():.4f} ({n} seeds)" if n > 1 else "") +
                  f"  ({time.time() - t0:.1f} s)")
  return {"runs": records, "finished": True}

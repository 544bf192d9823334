"""Pruning at initialization (SNIP, GraSP, SynFlow, magnitude, random) and
the sanity checks of Frankle et al. 2021: a method plug-in
(`lottery.method`) of the one driver (`lottery.driver`).

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
i, 'pai_batch'); SynFlow reads only its shape. Random draws are keyed by
values, not positions: replicate i's scores of `method` at density d use
rng.stream(seeds.control + i, 'pai_score', method, d, invert) and its checks
rng.stream(seeds.control + i, check, method, d), so adding or reordering
methods or densities leaves every other run bit-identical.

Under `pai.structure` 'neuron' a group criterion (`pai.group_score` 'taylor'
or 'bn_scale', `lottery.structure`) scores the units in place of the method's
scores, each round on the masked initial network ('taylor': the gradient on
the score batch); `pai.methods` must then name one method, and the 'invert'
check is refused (negated element scores do not invert a criterion).

Groups (each trains `seeds.num` replicates at once), in run order: dense,
then per method and density the method's tickets and then its checks; see
`lottery.driver`.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax import lax

from lottery import config as config_lib
from lottery import controls as controls_lib
from lottery import distributions
from lottery import driver
from lottery import masks as masks_lib
from lottery import method as method_lib
from lottery import pruning
from lottery import rng
from lottery import schedules
from lottery import scores as scores_lib
from lottery import structure as structure_lib
from lottery import tickets
from lottery import xla_options
from lottery.errors import LotteryError
from lottery.experiment import Experiment

__all__ = ["Pai", "iterations", "path", "prune_at_init", "run", "score_batch",
           "summary"]

DENSE = "dense"
# Checks that are controls of lottery.controls (key: rng.stream(seed, name)).
_CONTROL_CHECKS = ("shuffle", "reinit")

# The `pai` block of the config schema (`lottery.config`).
CHECKS = ("shuffle", "reinit", "invert")
MAX_ITERATIONS = 10_000


def _pai_methods(f, v, c) -> None:
  if not config_lib.distinct_tuple(f, v, "scores"):
    config_lib.fail(f, v, "must name at least one score")
  for x in v:
    config_lib.check_choice(f, x, scores_lib.all_names(), element=True)


def _pai_densities(f, v, c) -> None:
  if not config_lib.distinct_tuple(f, v, "densities"):
    config_lib.fail(f, v, "must hold at least one density")
  for x in v:
    config_lib.check_real(f, x, 0, 1, lo_open=True, hi_open=True)


def _pai_checks(f, v, c) -> None:
  for x in config_lib.distinct_tuple(f, v, "checks"):
    config_lib.check_choice(f, x, CHECKS, element=True)


def _pai_structure(f, v, c) -> None:
  spec = structure_lib.parse(v, field=f)
  if spec.kind == "N:M" and any(
      d != spec.n / spec.m for d in c["pai.densities"]):
    config_lib.fail(f, v, f"keeps {spec.n} of every {spec.m}: set "
                    f"pai.densities to ({spec.n / spec.m!r},), not "
                    f"{tuple(c['pai.densities'])}")


config_lib.read_when(
    "pai.group_score", lambda c: c["pai.structure"] in structure_lib.UNIT_KINDS)


def _pai_group_score(f, v, c) -> None:
  config_lib.check_choice(f, v, structure_lib.GROUP_SCORES)
  structure_lib.check_criterion(v, c["pai.structure"], None, None, "",
                                field=f, structure_field="pai.structure")
  if v not in structure_lib.CRITERIA:
    return
  if len(c["pai.methods"]) != 1:
    config_lib.fail(f, v, f"scores the units in place of a method's scores, "
                    f"so every method would give its mask: set pai.methods "
                    f"to one method, e.g. ('magnitude',), not "
                    f"{tuple(c['pai.methods'])}")
  if "invert" in c["pai.checks"]:
    config_lib.fail(f, v, "ranks units by its own unit scores, which the "
                    "'invert' check (negated element scores) does not "
                    "invert: leave 'invert' out of pai.checks")


def _pai_residual_streams(f, v, c) -> None:
  config_lib.boolean(f, v, c)
  structure_lib.check_streams(v, c["pai.structure"], field=f,
                              structure_field="pai.structure")


def parse_method_iterations(spec: str, *, field: str = "pai.method_iterations"
                            ) -> dict[str, int]:
  """Parses 'method=n,...' (e.g. 'synflow=100') into {method: n}."""
  config_lib.check_str(field, spec)
  out = {}
  for item in filter(None, (s.strip() for s in spec.split(","))):
    name, sep, n = item.partition("=")
    if not sep or not n.strip().isdigit():
      config_lib.fail(field, spec, "must be 'method=iterations,...', e.g. 'synflow=100'")
    name, n = name.strip(), int(n)
    config_lib.check_choice(field, name, scores_lib.all_names())
    if not 1 <= n <= MAX_ITERATIONS:
      config_lib.fail(field, spec, f"iterations of {name!r} must be in "
                      f"[1, {MAX_ITERATIONS}]")
    if name in out:
      config_lib.fail(field, spec, f"names {name!r} twice")
    out[name] = n
  return out


def _pai_method_iterations(f, v, c) -> None:
  parse_method_iterations(v, field=f)


# Pruning at initialization (lottery.pai, experiments/pai.py): each method
# (a score of lottery.scores) prunes the initial weights to each target
# density in `iterations` rounds of the exponential schedule d^(k/n),
# rescoring the masked network each round; the mask is then trained like
# any ticket. `checks` are Frankle et al. 2021's sanity checks, run for
# every method but 'random': shuffle (mask permuted within each layer),
# reinit (same mask, fresh weights), invert (keep the lowest scores).
# A check is the control `kind` of IMP's records: 'ticket' for the method
# itself (check None), else the check's name (`load_ticket(workdir,
# method='snip', kind='shuffle', target_density=0.1)`).
tickets.register_alias("kind", "check", lambda check: check or "ticket")


config_lib.register_block(
    "pai",
    dict(
        methods=("snip", "grasp", "synflow", "magnitude", "random"),
        densities=(0.1, 0.03, 0.01, 0.003),
        checks=("shuffle", "reinit", "invert"),
        iterations=1,  # Rounds of every method not in method_iterations.
        method_iterations="synflow=100",  # Overrides 'method=n,...'.
        scope="global",  # global | layerwise
        # Training examples the data-aware scores see (one batch, uniformly
        # drawn with the replicate's data seed): 100 = 10 per class on average
        # for 10 classes, as in Synaptic-Flow's prune loader.
        batch_size=100,
        dense=True,  # Also train the dense network (method 'dense').
        # unstructured | neuron (densities are then of units) | head (of
        # attention heads) | 'N:M' (e.g. '2:4', density N/M); see
        # lottery.structure.
        structure="unstructured",
        # neuron: sum | l1 | l2 of its weights' scores, or a criterion:
        # taylor (|sum of g * w| on the score batch) | bn_scale (|gamma|).
        group_score="sum",
        # neuron / head: False keeps the model's residual streams whole (a
        # ResNet then loses only its blocks' inner channels).
        residual_streams=True,
    ),
    rules={
        "pai.methods": _pai_methods,
        "pai.densities": _pai_densities,
        "pai.checks": _pai_checks,
        "pai.iterations": config_lib.count(1, MAX_ITERATIONS),
        "pai.method_iterations": _pai_method_iterations,
        "pai.scope": config_lib.one_of(lambda: pruning.SCOPES),
        "pai.batch_size": config_lib.count(1),
        "pai.dense": config_lib.boolean,
        "pai.structure": _pai_structure,
        "pai.group_score": _pai_group_score,
        "pai.residual_streams": _pai_residual_streams,
    },
    help={
        "pai.methods": "scores that prune the initial weights",
        "pai.densities": "target densities, each in (0, 1)",
        "pai.checks": "Frankle et al. 2021's sanity checks, for every method but random",
        "pai.iterations": "pruning rounds d^(k/n) of every method not in method_iterations",
        "pai.method_iterations": "per-method rounds 'method=n,...'",
        "pai.scope": "rank all prunable weights together (global) or each layer",
        "pai.batch_size": "training examples the data-aware scores see",
        "pai.dense": "also train the dense network (method 'dense')",
        "pai.structure": "unstructured, neuron / head (densities of units / heads) or 'N:M' such as '2:4' (density N/M)",
        "pai.group_score": "neuron/head: sum, l1 or l2 of its weights' scores, or taylor | bn_scale (in place of the method)",
        "pai.residual_streams": "neuron/head: False keeps residual streams whole (a ResNet loses only its blocks' inner channels)",
    })


def iterations(config: ml_collections.ConfigDict, method: str) -> int:
  """The number of pruning rounds of `method` under `config`."""
  return parse_method_iterations(
      config.pai.method_iterations).get(method, config.pai.iterations)


def path(method: str, target_density: float, seed: int,
         check: str | None = None) -> str:
  """The ticket directory of one run, relative to the workdir."""
  return tickets.ticket_path(Pai().directory(
      {"method": method, "check": check, "target_density": target_density}),
                             seed, 1)


def score_batch(exp: Experiment, replicate: int) -> tuple[np.ndarray,
                                                           np.ndarray]:
  """The (x, y) the scores of replicate `replicate` see: `pai.batch_size`
  training examples drawn without replacement with the replicate's data
  seed (stream 'pai_batch')."""
  ds = exp.dataset
  return scores_lib.draw_batch(
      ds.x_train, ds.y_train, exp.config.pai.batch_size,
      rng.stream(exp.config.seeds.data + replicate, "pai_batch"),
      field="pai.batch_size")


def _inverted(scores: Any, group_score: str = "sum") -> tuple[Any, str]:
  """(element scores, group score) that rank weights, or units under
  `group_score`, in the reverse order of `scores` (the 'invert' check):
  -s for weights and for a unit's 'sum'; a unit's 'l1' (sum of |s|) and 'l2'
  (root of the sum of s^2) reversed are the 'sum' of -|s| and of -s^2 (the
  root does not change the order). Negating the element scores alone would
  leave l1 and l2 unchanged."""
  if group_score == "l1":
    return jax.tree.map(lambda x: -jnp.abs(x), scores), "sum"
  if group_score == "l2":
    return jax.tree.map(lambda x: -jnp.square(x), scores), "sum"
  return jax.tree.map(jnp.negative, scores), group_score


@xla_options.jit(static_argnames=(
    "apply", "method", "rounds", "fraction", "scope", "invert", "structure",
    "group_score", "coupling", "residual_streams"))
def _prune_rounds(params, model_state, mask, batch, key, *, apply, method,
                  rounds, fraction, scope, invert, structure, group_score,
                  coupling, residual_streams):
  """`rounds` rounds of score + prune at `fraction`, in one fori_loop."""
  def apply_fn(p, x):
    return apply(p, model_state, x, train=False)[0]

  def one_round(k, m):
    if group_score in structure_lib.CRITERIA:  # It scores the units itself.
      s = scores_lib.for_criterion(group_score, apply_fn, params, m, batch)
    else:
      s = scores_lib.compute(method, apply_fn, params, m, batch,
                             jax.random.fold_in(key, k))
    reduce = group_score
    if invert:
      s, reduce = _inverted(s, group_score)
    return pruning.prune(m, s, fraction, scope=scope, structure=structure,
                         group_score=reduce, coupling=coupling,
                         residual_streams=residual_streams)

  return lax.fori_loop(0, rounds, one_round, mask)


def prune_at_init(exp: Experiment, method: str, density: float, params: Any,
                  model_state: Any, batch: tuple, key: jax.Array, *,
                  rounds: int = 1, scope: str = "global",
                  invert: bool = False, structure: str = "unstructured",
                  group_score: str = "sum",
                  residual_streams: bool = True) -> masks_lib.Mask:
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
    structure: 'unstructured'; 'neuron' (`density` is then the fraction of
      each unit set's units kept, coupled across layers); 'head' (the same
      over attention heads); or 'N:M' (keeps N
      of every M whatever `density`; later rounds keep the same mask).
    group_score: a unit's score under 'neuron' (`lottery.structure`); a
      criterion ('taylor': g * w of the masked network on `batch`,
      'bn_scale') scores the units in place of `method`.
    residual_streams: under 'neuron' or 'head', False keeps the model's
      residual streams whole (`lottery.prune`).

  Returns:
    The mask (bool leaves; None where not prunable).
  """
  fraction = schedules.pai_fraction(density, rounds)
  mask = jax.tree.map(lambda m: jnp.asarray(m, bool), exp.dense_mask)
  coupling = (structure_lib.coupling_of(exp.model)
              if structure in structure_lib.UNIT_KINDS else None)
  return jax.device_get(_prune_rounds(
      params, model_state, mask, tuple(jnp.asarray(b) for b in batch), key,
      apply=exp.apply_fn, method=method, rounds=rounds, fraction=fraction,
      scope=scope, invert=invert, structure=structure,
      group_score=group_score, coupling=coupling,
      residual_streams=residual_streams))


def _check_units_kept(config: ml_collections.ConfigDict,
                      exp: Experiment) -> None:
  """Refuses a density at which neuron (or head) pruning keeps no unit of
  a unit set (pai.scope 'layerwise', 'module') or none at all ('global'),
  after each method's rounds, by the one rounding rule."""
  p = config.pai
  sizes = structure_lib.unit_counts(
      exp.dense_mask, structure_lib.prunable_units(
          exp.model, p.residual_streams, field="pai.residual_streams"),
      kind=p.structure, field="pai.structure")
  for method in p.methods:
    rounds = iterations(config, method)
    for d in p.densities:
      fraction = schedules.pai_fraction(d, rounds)
      for name, n, _, _ in pruning.unit_groups(sizes, fraction, p.scope):
        if structure_lib.kept_after(n, [fraction] * rounds)[-1] == 0:
          raise LotteryError(
              f"pai.densities: {d!r} keeps no unit of {name} ({n} units, "
              f"pai.structure {p.structure!r}, pai.scope {p.scope!r}, {method} in "
              f"{rounds} round(s)); use a higher density")


def summary(workdir) -> dict:
  """The run's summary.json ({'runs': [...], 'finished': bool})."""
  return tickets.summary(workdir)


def run(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
        progress=None, log: Callable[[str], None] | None = None,
        log_steps: bool = False) -> dict:
  """Runs (or resumes) a pruning-at-initialization experiment.

  Args:
    config: a config from configs/pai_*.py (or `lottery.base_config()` with
      `method = 'pai'`).
    workdir: where everything is written; a workdir of an unfinished run of
      the same config is resumed, one of another config is refused.
    progress: a `lottery.progress.Progress`; default: none shown.
    log: receives the per-group lines when no `progress` is given.
    log_steps: also log the test metrics of every evaluation.

  Returns:
    {'runs': [{'method', 'check', 'target_density', 'seed', 'density',
    'layer_densities', 'test_accuracy', 'test_loss', 'train_loss', 'time_s',
    'ticket', 'iterations'}, ...], 'finished': True}, also written to
    <workdir>/summary.json; one record per replicate. `check` is None for
    the method itself, 'dense' has target_density 1.0. Any run loads with
    `lottery.load_ticket(workdir, method=..., check=..., target_density=...,
    seed=...)`.
  """
  return driver.run(config, workdir, method="pai", progress=progress,
                    log=log, log_steps=log_steps)


@method_lib.register
class Pai(method_lib.Method):
  """Pruning at initialization as a method plug-in (see the module doc).

  Coordinates: {'method': a score or 'dense', 'check': None | 'shuffle' |
  'reinit' | 'invert', 'target_density': d}.
  """

  name = "pai"
  fields = ("pruning.prunable", "pai")
  notebook = "pruning_at_init.ipynb"

  def directory(self, coords: dict) -> str:
    return (f"pai/{coords['method']}/{coords['check'] or 'ticket'}/"
            f"density_{coords['target_density']!r}")

  def grid(self, ctx: method_lib.Context) -> list[dict]:
    p = ctx.config.pai
    out = [(DENSE, None, 1.0)] if p.dense else []
    for method in p.methods:
      for d in p.densities:
        out.append((method, None, d))
        if method != "random":
          out += [(method, check, d) for check in p.checks]
    return [{"method": m, "check": c, "target_density": d}
            for m, c, d in out]

  def before_claim(self, ctx: method_lib.Context) -> None:
    spec = structure_lib.check_model(
        ctx.config.pai.structure, ctx.exp.dense_mask, ctx.exp.model,
        ctx.config.model.name, field="pai.structure",
        residual_streams=ctx.config.pai.residual_streams,
        streams_field="pai.residual_streams")
    if spec.kind in structure_lib.UNIT_KINDS:
      _check_units_kept(ctx.config, ctx.exp)
    structure_lib.check_criterion(
        ctx.config.pai.group_score, spec, ctx.exp.dense_mask, ctx.exp.model,
        ctx.config.model.name, field="pai.group_score",
        structure_field="pai.structure")
    # A density that keeps no weight of a layer (pai.scope 'layerwise') or
    # none at all (global, module: the layer named is the first) is refused.
    shapes = distributions.shapes_of(ctx.exp.dense_mask)
    total = sum(math.prod(s) for s in shapes.values())
    scope = ctx.config.pai.scope
    for d in ctx.config.pai.densities:
      if scope == "layerwise":
        counts, how = distributions.uniform(shapes, d), "pai.scope 'layerwise'"
      else:
        counts = dict.fromkeys(shapes, distributions.keep_count(d, total))
        how = f"pai.scope {scope!r}: none of all {total} prunable weights"
      distributions.check_every_layer_kept("pai.densities", d, counts,
                                           shapes, how)
    for i in range(ctx.replicates):  # A batch_size above the data is refused.
      score_batch(ctx.exp, i)

  def _batch(self, ctx, i: int):
    if ("batch", i) not in ctx.state:
      ctx.state["batch", i] = score_batch(ctx.exp, i)
    return ctx.state["batch", i]

  def _masks(self, ctx, method: str, d: float, invert: bool) -> list:
    """The method's masks of every replicate at density d (computed once)."""
    key = ("masks", method, d, invert)
    if key not in ctx.state:
      c, exp = ctx.config, ctx.exp
      ctx.state[key] = [prune_at_init(
          exp, method, d, *ctx.init(i), self._batch(ctx, i),
          rng.stream(c.seeds.control + i, "pai_score", method, d,
                     int(invert)),
          rounds=iterations(c, method), scope=c.pai.scope, invert=invert,
          structure=c.pai.structure, group_score=c.pai.group_score,
          residual_streams=c.pai.residual_streams)
                        for i in range(ctx.replicates)]
    return ctx.state[key]

  def start(self, ctx: method_lib.Context,
            coords: dict) -> method_lib.GroupStart:
    c, exp = ctx.config, ctx.exp
    method, check, d = (coords["method"], coords["check"],
                        coords["target_density"])
    starts = []
    for i in range(ctx.replicates):
      params, model_state = ctx.init(i)
      mask = (exp.dense_mask if method == DENSE else
              self._masks(ctx, method, d, check == "invert")[i])
      start = controls_lib.Start(mask, params, model_state)
      if check in _CONTROL_CHECKS:
        start = controls_lib.get(check)(
            exp, start, rng.stream(c.seeds.control + i, check, method, d))
      starts.append(start)
    return method_lib.GroupStart(starts)

  def record(self, ctx, done: method_lib.Done) -> list[dict]:
    method = done.coords["method"]
    rounds = 0 if method == DENSE else iterations(ctx.config, method)
    return [{**r, "iterations": rounds}
            for r in super().record(ctx, done)]

  def report(self, ctx, done: method_lib.Done) -> method_lib.Report:
    recs, n = done.records, ctx.replicates
    accs = np.asarray([r["test_accuracy"] for r in recs])
    return method_lib.Report(
        f"{done.coords['method']:>9s} {done.coords['check'] or '':7s} "
        f"density {np.mean([r['density'] for r in recs]):.4f}  test acc "
        f"{accs.mean():.4f}" +
        (f" ± {accs.std():.4f} ({n} seeds)" if n > 1 else "") +
        f"  ({done.time_s:.1f} s)")

"""Iterative magnitude pruning with rewinding, and its controls: a method
plug-in (`lottery.method`) of the one driver (`lottery.driver`).

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

Under `pruning.structure` 'neuron' a group criterion (`pruning.group_score`
'taylor' or 'bn_scale', `lottery.structure`) scores the units in place of
`pruning.score`: 'taylor' on the previous round's trained network (in
evaluation mode, its model state) with the loss gradient of
`pruning.batch_size` training examples drawn for replicate i and round r with
rng.stream(seeds.data + i, 'imp_batch', r).

Beside each pruned round's ticket the controls in `config.controls` (see
`lottery.controls`) run from the same config and train exactly like the ticket.

With `pruning.stability_every` = n > 0, every n-th round (round 0 included)
also trains a copy of the ticket (kind 'stability_copy') from the ticket's
start -- round 0 under reset 'rewind': the rewind point, at step rewind_step
-- on another data order (seeds.data + seeds.num + i), and its record gains
'barrier_test' and 'barrier_train': the error barriers of the linear path
between the ticket and its copy (Frankle et al. 2020; see `lottery.stability`).
With `pruning.level_barrier`, round r's record gains 'level_barrier_test' and
'level_barrier_train': the barriers between rounds r - 1 and r's trained
networks (Paul et al. 2023).

Groups (each trains `seeds.num` replicates at once), in run order: round 0's
ticket, round 1's ticket, round 1's controls, round 2's ticket, ...; see
`lottery.driver`. A round's start is computed from the previous round's
tickets only when one of its groups still has to train.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

from lottery import checkpoint
from lottery import config as config_lib
from lottery import controls as controls_lib
from lottery import driver
from lottery import jobs as jobs_lib
from lottery import loop as loop_lib
from lottery import masks as masks_lib
from lottery import method as method_lib
from lottery import pruning
from lottery import rng
from lottery import scores as scores_lib
from lottery import schedules
from lottery import structure as structure_lib
from lottery.shrink import check as check_shrinkable
from lottery import tickets
from lottery import xla_options
from lottery.errors import LotteryError
from lottery.experiment import Experiment
from lottery.experiment import build
from lottery.registry import Registry

__all__ = ["RESETS", "Imp", "build", "round_rate", "run", "summary"]

REWIND_POINT = "rewind_point"
# The kind of a ticket's copy trained on another data order (instability).
COPY = "stability_copy"

@checkpoint.register_remedy
def _rewind_point_remedy(path: pathlib.Path) -> str | None:
  """The rewind point (one per replicate) is written with round 0's ticket
  and rewritten only with it."""
  if path.name.startswith(REWIND_POINT):
    round0 = path.parent / os.path.dirname(tickets.imp_path(0))
    return f"delete {os.fspath(path)!r} and {os.fspath(round0)!r}"
  return None


# The fraction of the survivors round r removes (`lottery.schedules`).
round_rate = schedules.round_rate


@dataclasses.dataclass(frozen=True)
class Reset:
  """How a pruned round starts: weights, model state, first step, rates."""
  params: Any
  model_state: Any
  start_step: int
  lr_fn: Callable[[int, int], np.ndarray]


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


# Reset policies by name (config `pruning.reset`): (experiment, previous
# ticket, (rewind params, rewind model state)) -> Reset. `RESETS[name]` and
# `RESETS.get(name)` give one; `RESETS.register(name)` adds one,
# `RESETS.unregister(name)` removes it.
RESETS = Registry("reset", "pruning.reset")
RESETS.register("rewind")(_rewind)
RESETS.register("lr_rewind")(_lr_rewind)
RESETS.register("finetune")(_finetune)


def _score(f, v, c) -> None:
  """A params-only score; a registered one that needs data is named so."""
  if isinstance(v, str) and v in scores_lib.all_names():
    scores_lib.get(v, field=f)  # Refuses a score that needs data.
  else:
    config_lib.one_of(scores_lib.names)(f, v, c)


def _rewind_step(f, v, c) -> None:
  config_lib.below_steps(f, v, c)
  reset = c["pruning.reset"]
  if v and reset != "rewind":
    config_lib.fail(f, v, f"only applies to pruning.reset='rewind', not {reset!r}")


def _layer_fractions(f, v, c) -> None:
  config_lib.check_str(f, v)
  pruning.parse_layer_fractions(v, field=f)


SCHEDULES = schedules.IMP_SCHEDULES  # ('geometric', 'linear')
# The default controls; any name registered in lottery.controls is allowed.
DEFAULT_CONTROLS = ("reinit", "random_prune")
# The built-in reset policies (`RESETS` may hold more).
RESET_NAMES = ("rewind", "lr_rewind", "finetune")


def _schedule(f, v, c) -> None:
  config_lib.check_choice(f, v, SCHEDULES)
  if v != "linear":
    return
  rounds = c["pruning.rounds"]
  rates = [("pruning.fraction", c["pruning.fraction"])] + [
      (f"pruning.layer_fractions ({k})", r) for k, r in
      pruning.parse_layer_fractions(c["pruning.layer_fractions"]).items()]
  for name, rate in rates:
    if rounds * rate >= 1:
      config_lib.fail("pruning.rounds", rounds,
                      f"with pruning.schedule='linear', rounds x {name}={rate} must "
                      f"stay below 1 (density 1 - rounds x rate)")


def _structure(f, v, c) -> None:
  spec = structure_lib.parse(v, field=f)
  if spec.kind == "N:M" and c["pruning.layer_fractions"]:
    config_lib.fail(f, v, f"takes no pruning.layer_fractions (N:M keeps N of "
                    f"every M in every layer): set it to '', not "
                    f"{c['pruning.layer_fractions']!r}")
  if spec.kind == "N:M" and c["pruning.rounds"] > 1:
    config_lib.fail(f, v, f"prunes once (round 1 keeps {spec.n} of every "
                    f"{spec.m}); set pruning.rounds to 1, not "
                    f"{c['pruning.rounds']}")


def _group_score(f, v, c) -> None:
  config_lib.check_choice(f, v, structure_lib.GROUP_SCORES)
  structure_lib.check_criterion(v, c["pruning.structure"], None, None, "",
                                field=f, structure_field="pruning.structure")


# pruning.path_points' default.
PATH_POINTS = 30


_path_points_read = config_lib.read_when(
    "pruning.path_points",
    lambda c: bool(c["pruning.level_barrier"] or c["pruning.stability_every"]))
config_lib.read_when(
    "pruning.group_score",
    lambda c: c["pruning.structure"] in structure_lib.UNIT_KINDS)
TAYLOR_BATCH = 100  # pruning.batch_size's default.
_batch_size_read = config_lib.read_when(
    "pruning.batch_size", lambda c: c["pruning.group_score"] == "taylor")


def _batch_size(f, v, c) -> None:
  config_lib.count(1)(f, v, c)
  if v != TAYLOR_BATCH and not _batch_size_read(c):
    config_lib.fail(f, v, f"is read by pruning.group_score='taylor', and "
                    f"it is {c['pruning.group_score']!r}")


def _path_points(f, v, c) -> None:
  config_lib.check_int(f, v, 3, 10_000)  # The ends and a point between.
  if v != PATH_POINTS and not _path_points_read(c):
    config_lib.fail(f, v, "is read by pruning.level_barrier and "
                    "pruning.stability_every, which are both off")


def _residual_streams(f, v, c) -> None:
  config_lib.boolean(f, v, c)
  structure_lib.check_streams(v, c["pruning.structure"], field=f,
                              structure_field="pruning.structure")


def _stability_every(f, v, c) -> None:
  config_lib.check_int(f, v, 0)
  if v:
    config_lib.check_copy_seeds(f, v, c)


def _controls(f, v, c) -> None:
  if not isinstance(v, (tuple, list)):
    config_lib.fail(f, v, "must be a tuple, e.g. ('reinit',)")
  for x in v:
    config_lib.check_choice(f, x, controls_lib.names(), element=True)
  if len(set(v)) != len(v):
    config_lib.fail(f, v, "must not repeat a control")


# The blocks of the config schema (`lottery.config`) that IMP reads;
# `pruning.prunable` is read by every method that prunes (their `fields`
# name it).
config_lib.register_block(
    "pruning",
    dict(
        fraction=0.2,  # Fraction of surviving prunable weights removed per round.
        rounds=10,  # Pruning rounds after the dense round 0.
        # geometric: each round removes `fraction` of the survivors (density
        # (1 - fraction)^r); linear: sparsity rises by `fraction` of all the
        # prunable weights per round (density 1 - r * fraction).
        schedule="geometric",
        scope="layerwise",  # layerwise | global | module (a layer's leaves)
        prunable=(".*kernel",),  # Regexes (re.fullmatch) over 'fc1/kernel'.
        # Overrides 'regex=rate,...', e.g. 'out/kernel=0.1' (first match
        # wins; 0 exempts a layer); under neuron / head a unit set takes its
        # producer kernel's rate ('conv1/kernel=0.5').
        layer_fractions="",
        score="magnitude",
        # rewind: weights back to step rewind_step of round 0, train the rest;
        # lr_rewind: keep trained weights, replay the whole schedule;
        # finetune: keep trained weights, train all steps at the final rate.
        reset="rewind",
        rewind_step=0,
        # Instability analysis of the tickets (lottery.stability): every N-th
        # round (0: none) a copy of the ticket trains from the ticket's start
        # (round 0 under 'rewind': the rewind point) with another data order;
        # the error barrier on the linear path between the two is recorded.
        stability_every=0,
        # Record the error barrier between the trained networks of successive
        # rounds (Paul et al. 2023).
        level_barrier=False,
        path_points=PATH_POINTS,  # Points of those paths, ends included.
        # unstructured | neuron (whole units, coupled across layers) | head
        # (whole attention heads) | 'N:M'
        # (e.g. '2:4': round 1 keeps N of every M along the input axis); see
        # lottery.structure.
        structure="unstructured",
        # neuron: sum | l1 | l2 of its weights' scores (pruning.score), or a
        # criterion in their place: taylor (|sum of g * w| of the trained
        # network on a batch) | bn_scale (|gamma| of its BatchNorm channel).
        group_score="sum",
        # neuron / head: False keeps the model's residual streams whole (a
        # ResNet then loses only its blocks' inner channels).
        residual_streams=True,
        # taylor: the training examples of the batch (drawn per round and
        # replicate) whose loss gradient scores the units.
        batch_size=TAYLOR_BATCH,
    ),
    rules={
        "pruning.fraction": config_lib.fraction,
        "pruning.rounds": config_lib.count(0),
        "pruning.scope": config_lib.one_of(lambda: pruning.SCOPES),
        "pruning.prunable": config_lib.check_patterns,
        "pruning.layer_fractions": _layer_fractions,
        "pruning.schedule": _schedule,
        "pruning.score": _score,
        "pruning.reset": config_lib.one_of(RESETS.names),
        "pruning.rewind_step": _rewind_step,
        "pruning.stability_every": _stability_every,
        "pruning.level_barrier": config_lib.boolean,
        "pruning.path_points": _path_points,
        "pruning.structure": _structure,
        "pruning.group_score": _group_score,
        "pruning.residual_streams": _residual_streams,
        "pruning.batch_size": _batch_size,
    },
    help={
        "pruning.fraction": "fraction of the surviving prunable weights removed per round",
        "pruning.rounds": "pruning rounds after the dense round 0",
        "pruning.schedule": "geometric: density (1 - fraction)^r; linear: density 1 - r * fraction",
        "pruning.scope": "which weights are ranked together: each layer, all, or each module's leaves",
        "pruning.prunable": "regexes (re.fullmatch) over parameter paths such as 'fc1/kernel'",
        "pruning.layer_fractions": "per-layer rates 'regex=rate,...', e.g. 'out/kernel=0.1' (a unit set: its producer's)",
        "pruning.score": "the importance score ranked by each round",
        "pruning.reset": "rewind: weights of step rewind_step; lr_rewind: replay the schedule; finetune: final rate",
        "pruning.rewind_step": "the step of round 0 whose weights later rounds rewind to",
        "pruning.stability_every": "every N-th round: the ticket's instability (a copy on another data order); 0: none",
        "pruning.level_barrier": "record the error barrier between successive rounds' trained networks",
        "pruning.path_points": "evenly spaced points of those linear paths, ends included",
        "pruning.structure": "unstructured, neuron (whole units), head (whole attention heads) or 'N:M' such as '2:4' (one round)",
        "pruning.group_score": "neuron/head: sum, l1 or l2 of its weights' scores, or taylor | bn_scale (in place of pruning.score)",
        "pruning.residual_streams": "neuron/head: False keeps residual streams whole (a ResNet loses only its blocks' inner channels)",
        "pruning.batch_size": "taylor: training examples whose loss gradient scores the units",
    })
# Controls run every pruned round beside the ticket: 'reinit' (same mask,
# fresh weights) and 'random_prune' (same per-layer densities, random
# positions, the ticket's starting weights).
config_lib.register_block(
    "controls", DEFAULT_CONTROLS,
    rules={
        "controls": _controls,
    },
    help={
        "controls": "controls trained beside each pruned round's ticket",
    })


def _controls_every(field: str, value, values: dict) -> None:
  if value == 0 and type(value) is int:
    raise LotteryError(f"{field}: must be an integer >= 1 (got 0); to run no "
                       f"controls, set controls=()")
  config_lib.count(1)(field, value, values)


# Run the controls on every N-th round and the last.
config_lib.register_block(
    "controls_every", 1,
    rules={
        "controls_every": _controls_every,
    },
    help={
        "controls_every": "run the controls on every N-th round and on the last",
    })


def summary(workdir) -> dict:
  """The run's summary.json as a dict ({'rounds': [...], 'finished': bool})."""
  return tickets.summary(workdir)


def run(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
        progress=None, log: Callable[[str], None] | None = None,
        log_steps: bool = False,
        on_round: Callable[[dict], None] | None = None) -> dict:
  """Runs (or resumes) an IMP experiment; returns its summary.

  Args:
    config: a config from `lottery.config.base_config()` or configs/ whose
      `method` is 'imp'.
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
  def on_group(done: method_lib.Done, report) -> None:
    del done
    if report is not None and report.record is not None:
      on_round(report.record)

  return driver.run(config, workdir, method="imp", progress=progress, log=log,
                    log_steps=log_steps,
                    on_group=None if on_round is None else on_group)


def _aggregate(records: list[dict]) -> dict:
  """A group's record: its replicates' records under 'seeds', and the mean
  (std for test accuracy) of their metrics; `ticket` is replicate 0's."""
  seeds = records
  rec = {k: v for k, v in seeds[0].items() if k != "seed"}
  for k in ("density", "test_accuracy", "test_loss", "train_loss",
            "early_stop_step", "early_stop_test_accuracy", "barrier_test",
            "barrier_train", "level_barrier_test", "level_barrier_train"):
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


def _score_batch(config, exp: Experiment, i: int, r: int):
  """The batch whose loss gradient scores round r's units under 'taylor'
  for replicate i: `pruning.batch_size` training examples drawn with
  rng.stream(seeds.data + i, 'imp_batch', r)."""
  ds = exp.dataset
  return scores_lib.draw_batch(
      ds.x_train, ds.y_train, config.pruning.batch_size,
      rng.stream(config.seeds.data + i, "imp_batch", r),
      field="pruning.batch_size")


def _prune(config, exp: Experiment, score_fn, prev: list[tickets.Ticket],
           r: int, programs: dict | None = None) -> list[Any]:
  """Round r's masks from each replicate's previous ticket (vmapped over
  the replicates on the device when there are several). `programs` keeps a
  group criterion's compiled program across rounds, by the round's rates:
  rounds at the same rate (a constant `pruning.fraction`) share one."""
  p = config.pruning
  rate = schedules.round_rate(p.schedule, p.fraction, r)
  layer_fractions = {k: schedules.round_rate(p.schedule, v, r)
                     for k, v in exp.layer_fractions.items()}

  coupling = (structure_lib.coupling_of(exp.model)
              if p.structure in structure_lib.UNIT_KINDS else None)
  # A group criterion scores the units in place of pruning.score (its
  # config rule refuses it without 'neuron' or 'head').
  criterion = (p.group_score if p.group_score in structure_lib.CRITERIA
               else None)

  def scores(params, key, model_state, batch, mask):
    if criterion is None:
      return score_fn(params, key)
    apply_fn = lambda q, x: exp.apply_fn(q, model_state, x, train=False)[0]
    return scores_lib.for_criterion(criterion, apply_fn, params, mask, batch)

  def one(mask, params, key, model_state=None, batch=None):
    return pruning.prune(mask, scores(params, key, model_state, batch, mask),
                         rate, scope=p.scope,
                         layer_fractions=layer_fractions,
                         structure=p.structure, group_score=p.group_score,
                         coupling=coupling,
                         residual_streams=p.residual_streams)

  keys = [rng.stream(config.seeds.control + i, "random_score", r)
          for i in range(len(prev))]
  # The trained networks' model state and a batch, for the taylor criterion.
  extra = ([] if criterion != "taylor" else
           [[t.model_state for t in prev],
            [_score_batch(config, exp, i, r) for i in range(len(prev))]])
  # A group criterion runs the model (taylor): compiled like every program
  # that does, so its scores are PaI's for the same network and batch; one
  # program for every round at the same rates. Where the loop unrolls the
  # replicates (the CPU), it scores them one at a time, as their single runs
  # do (vmapped, its gradients would sum in another order).
  vmapped = len(prev) > 1 and (criterion is None or
                               exp.loop.replicas == "vmap")
  fn = jax.vmap(one) if vmapped else one
  if criterion is not None:
    programs = {} if programs is None else programs
    key = (rate, tuple(sorted(layer_fractions.items())), vmapped)
    if key not in programs:
      programs[key] = xla_options.jit(fn)
    fn = programs[key]
  if not vmapped:
    return [fn(t.mask, t.trained_params, keys[i], *[e[i] for e in extra])
            for i, t in enumerate(prev)]
  stack = lambda trees: jax.tree.map(lambda *xs: np.stack(xs), *trees)
  masks = jax.device_get(fn(stack([t.mask for t in prev]),
                            stack([t.trained_params for t in prev]),
                            jax.numpy.stack(keys),
                            *[stack(e) for e in extra]))
  return [loop_lib.unstack(masks, i) for i in range(len(prev))]


def _stream_free_coupling(config, exp: Experiment):
  """The model's unit sets that `pruning.structure` prunes (without the
  residual streams under `pruning.residual_streams` False)."""
  return structure_lib.prunable_units(
      exp.model, config.pruning.residual_streams,
      field="pruning.residual_streams")


def _check_shrinks(exp: Experiment, p) -> None:
  """Refuses (one line) a model whose tickets the 'scratch' control cannot
  shrink: a trial shrink of its initialization with half of every unit set
  pruned by magnitude must compute what the masked network computes on two
  training examples (`lottery.shrink`), which a coupling() that
  misdescribes the model's connections (a residual stream declared as two
  sets) fails."""
  from lottery.shrink import shrink  # pylint: disable=g-import-not-at-top
  mask = pruning.prune(exp.dense_mask, scores_lib.magnitude(exp.init_params),
                       0.5, structure=p.structure, coupling=exp.model,
                       residual_streams=p.residual_streams)
  try:
    shrink(exp.model, exp.init_params, exp.init_model_state, mask,
           x=exp.dataset.x_train[:2])
  except LotteryError as e:
    raise LotteryError(f"controls: the 'scratch' control shrinks the "
                       f"tickets, and {str(e).partition(': ')[2]}") from None


def _check_units_kept(config, exp: Experiment) -> None:
  """Refuses rounds that, by the one rounding rule, remove every unit of a
  unit set (pruning.scope 'layerwise', 'module'; a set at its own
  `layer_fractions` rate in any scope) or every unit of the sets ranked
  together ('global'), before anything is written."""
  p = config.pruning
  sizes = structure_lib.unit_counts(
      exp.dense_mask, _stream_free_coupling(config, exp), kind=p.structure,
      field="pruning.structure")
  whole = (() if p.residual_streams else
           structure_lib.stream_producers(exp.model))
  own = (pruning.unit_set_fractions(
      list(sizes), exp.layer_fractions, structure=p.structure, whole=whole,
      streams_field="pruning.residual_streams")
         if exp.layer_fractions else None)
  _refuse_emptied(p, pruning.unit_groups(sizes, p.fraction, p.scope, own),
                  "unit", f"pruning.structure {p.structure!r}, ")


def _check_weights_kept(config, exp: Experiment) -> None:
  """Refuses rounds that, by the one rounding rule, remove every weight of
  what a prune ranks together (a layer under 'layerwise', a module under
  'module', every layer under 'global', a layer at its own
  `layer_fractions` rate in any scope) and that holds more than biases:
  the network is then cut, and later rounds would train it again. Before
  anything is written."""
  p = config.pruning
  sizes = {name: total for name, (_, total)
           in masks_lib.counts(exp.dense_mask).items()}
  groups = [g[:4] for g in pruning.weight_groups(
      sizes, p.fraction, p.scope, exp.layer_fractions)
            # Biases alone: their layers still compute.
            if not all(m.endswith("/bias") for m in g[4])]
  _refuse_emptied(p, groups, "weight")


def _refuse_emptied(p, groups, what: str, words: str = "") -> None:
  """Refuses `pruning.rounds` (block `p`) if, by the one rounding rule, a
  round leaves no `what` ('unit', 'weight') of one of `groups` ((name,
  count, rate, own rate) each), naming the earliest such round."""
  emptied = []
  for name, n, rate, is_own in groups:
    kept = structure_lib.kept_after(
        n, [schedules.round_rate(p.schedule, rate, r)
            for r in range(1, p.rounds + 1)])
    if 0 in kept:
      emptied.append((kept.index(0) + 1, name, n, rate, is_own))
  if emptied:
    r, name, n, rate, is_own = min(emptied, key=lambda e: e[0])
    said = (f"pruning.layer_fractions rate {rate!r}" if is_own else
            f"pruning.fraction {p.fraction!r}")
    raise LotteryError(
        f"pruning.rounds: round {r} removes every {what} of {name} ({n} "
        f"{what}s, {words}pruning.scope {p.scope!r}, {said}); use fewer "
        f"rounds or a lower fraction")


def _check_sets_kept(config, exp: Experiment, masks: list, r: int) -> None:
  """Under pruning.scope 'global', where the scores decide each set's count:
  refuses round r's masks if one removes every unit of a unit set, before
  they are used (the earlier rounds stay as they are, and the same config
  on the workdir comes back here without training them again)."""
  p = config.pruning
  coupling = _stream_free_coupling(config, exp)
  for i, mask in enumerate(masks):
    emptied = structure_lib.emptied_sets(mask, coupling, p.structure)
    if emptied:
      raise LotteryError(
          f"pruning.rounds: round {r} (pruning.scope 'global', "
          f"pruning.fraction {p.fraction!r}) removes every unit of "
          f"{emptied[0]} in replicate {i}; rounds 0 to {r - 1} stay in the "
          f"workdir: for more, use a lower fraction, pruning.scope "
          f"'layerwise' or fewer rounds in a new workdir")


def _path_file(ctx, ticket: str, prefix: str) -> str:
  """A path evaluation kept in a ticket's directory: the stability copy's
  ('') or the level barrier's ('level_')."""
  return os.path.join(ctx.workdir, ticket, f"{prefix}path.json")


@method_lib.register
class Imp(method_lib.Method):
  """Iterative magnitude pruning as a method plug-in (see the module doc).

  Coordinates: {'round': r, 'kind': 'ticket' | a control's name |
  'stability_copy'}.
  """

  name = "imp"
  fields = ("pruning", "controls", "controls_every")
  summary_key = "rounds"
  seed_dir_when_single = False
  notebook = "tickets.ipynb"

  def directory(self, coords: dict) -> str:
    return imp_path(coords["round"], coords["kind"])

  def grid(self, ctx: method_lib.Context) -> list[dict]:
    c, out = ctx.config, []
    for r in range(c.pruning.rounds + 1):
      out.append({"round": r, "kind": "ticket"})
      controls = [{"round": r, "kind": k} for k in c.controls]
      # Controls run every controls_every pruned rounds and on the last;
      # also wherever a run extended with more rounds already has them.
      due = r > 0 and (r % c.controls_every == 0 or r == c.pruning.rounds)
      if due or any(ctx.is_finished(k) for k in controls):
        out += controls
      if c.pruning.stability_every and r % c.pruning.stability_every == 0:
        out.append({"round": r, "kind": COPY})
    return out

  def replicas(self, ctx, coords: dict) -> list[method_lib.Replica]:
    reps = super().replicas(ctx, coords)
    if coords["kind"] == COPY:  # Another data order than the ticket's.
      reps = [dataclasses.replace(r, data_seed=r.data_seed + ctx.replicates)
              for r in reps]
    return reps

  def before_claim(self, ctx: method_lib.Context) -> None:
    p, t = ctx.config.pruning, ctx.config.training
    structure_lib.check_model(
        p.structure, ctx.exp.dense_mask, ctx.exp.model, ctx.config.model.name,
        field="pruning.structure", residual_streams=p.residual_streams,
        streams_field="pruning.residual_streams")
    structure_lib.check_criterion(
        p.group_score, p.structure, ctx.exp.dense_mask, ctx.exp.model,
        ctx.config.model.name, field="pruning.group_score",
        structure_field="pruning.structure")
    if p.structure in structure_lib.UNIT_KINDS:
      # Also each unit set's layer_fractions rate (refusing patterns that
      # match no set's producer or sets whose producers disagree).
      _check_units_kept(ctx.config, ctx.exp)
    elif p.structure == "unstructured" and not ctx.resumes:
      # A run started before this rule resumes as it was.
      _check_weights_kept(ctx.config, ctx.exp)
    if p.group_score == "taylor":
      for i in range(ctx.replicates):  # A batch_size above the data.
        _score_batch(ctx.config, ctx.exp, i, 1)
    if "scratch" in ctx.config.controls:
      check_shrinkable(ctx.exp.model, field="controls",
                       what="the 'scratch' control")
      if p.structure in structure_lib.UNIT_KINDS:
        _check_shrinks(ctx.exp, p)
      else:
        ctx.progress.info(
            f"note: the 'scratch' control under pruning.structure="
            f"{p.structure!r}: a ticket shrinks only by the units its mask "
            f"leaves empty, so scratch is close to reinit until units die")
    if p.reset in ("lr_rewind", "finetune") and t.schedule == "constant":
      ctx.progress.info(f"note: pruning.reset={p.reset!r} under a constant "
                        f"schedule: lr_rewind and finetune are the same "
                        f"procedure")

  def _rewind_path(self, ctx, i: int) -> str:
    return (REWIND_POINT if ctx.replicates == 1 else
            f"{REWIND_POINT}_seed_{i}")

  def _rewinds(self, ctx) -> list[tuple[Any, Any]]:
    """Each replicate's (params, model_state) at the rewind step."""
    if "rewinds" not in ctx.state:
      p, n = ctx.config.pruning, ctx.replicates
      if p.reset == "rewind" and p.rewind_step:
        ctx.state["rewinds"] = [jobs_lib.load_capture(
            ctx.workdir, self._rewind_path(ctx, i)) for i in range(n)]
      else:
        ctx.state["rewinds"] = [ctx.init(i) for i in range(n)]
    return ctx.state["rewinds"]

  def _round_start(self, ctx, r: int):
    """Round r's (masks, resets), computed once per run."""
    key = ("round", r)
    if key not in ctx.state:
      c, exp, n = ctx.config, ctx.exp, ctx.replicates
      if r == 0:
        masks = [exp.dense_mask] * n
        resets = [Reset(params, model_state, 0, exp.learning_rates)
                  for params, model_state in
                  [ctx.init(i) for i in range(n)]]
      else:
        prev = ctx.tickets({"round": r - 1, "kind": "ticket"})
        if "score_fn" not in ctx.state:
          # One program, not one a leaf.
          ctx.state["score_fn"] = xla_options.jit(
              scores_lib.get(c.pruning.score))
        masks = _prune(c, exp, ctx.state["score_fn"], prev, r,
                       ctx.state.setdefault("prune_programs", {}))
        if (c.pruning.structure in structure_lib.UNIT_KINDS and
            c.pruning.scope == "global"):
          _check_sets_kept(c, exp, masks, r)
        reset_fn = RESETS[c.pruning.reset]
        resets = [reset_fn(exp, prev[i], self._rewinds(ctx)[i])
                  for i in range(n)]
      ctx.state[key] = (masks, resets)
    return ctx.state[key]

  def start(self, ctx: method_lib.Context,
            coords: dict) -> method_lib.GroupStart:
    c, r, kind = ctx.config, coords["round"], coords["kind"]
    masks, resets = self._round_start(ctx, r)
    weights = [(s.params, s.model_state) for s in resets]
    step, capture = resets[0].start_step, None
    if r == 0 and c.pruning.reset == "rewind" and c.pruning.rewind_step:
      if kind == COPY:  # The dense network's instability at the rewind step.
        weights, step = self._rewinds(ctx), c.pruning.rewind_step
      else:
        capture = c.pruning.rewind_step
    starts = [controls_lib.Start(m, *w) for m, w in zip(masks, weights)]
    if kind not in ("ticket", COPY):
      starts = [controls_lib.get(kind)(
          ctx.exp, s, rng.stream(c.seeds.control + i, kind, r))
                for i, s in enumerate(starts)]
    return method_lib.GroupStart(
        starts, start_step=step, lr_fn=resets[0].lr_fn, capture=capture,
        capture_paths=[self._rewind_path(ctx, i)
                       for i in range(ctx.replicates)])

  def verify_finished(self, ctx, coords: dict) -> None:
    # The paths' evaluations kept in the tickets' directories (`record`).
    for p in ctx.paths(coords):
      for prefix in ("", "level_"):
        file = _path_file(ctx, p, prefix)
        if checkpoint.exists(file):
          checkpoint.read_json(file)

  def record(self, ctx, done: method_lib.Done) -> list[dict]:
    recs = [{k: v for k, v in rec.items() if k != "layer_densities"}
            for rec in super().record(ctx, done)]
    r, kind = done.coords["round"], done.coords["kind"]
    if kind == COPY:  # The path from the ticket to its copy, masked.
      other, masked, prefix = r, True, ""
    elif kind == "ticket" and ctx.config.pruning.level_barrier and r > 0:
      # From round r - 1's trained network to round r's: not masked.
      other, masked, prefix = r - 1, False, "level_"
    else:
      return recs
    # Imported here: lottery.stability registers its config block on import,
    # after IMP's (the schema's order).
    from lottery import stability as stability_lib  # pylint: disable=g-import-not-at-top
    for rec, a, b, p in zip(recs, ctx.tickets({"round": other,
                                                "kind": "ticket"}),
                            done.tickets, done.paths):
      path = stability_lib.path_metrics(
          ctx.exp, a.trained_params, b.trained_params, a.model_state,
          a.mask if masked else None, points=ctx.config.pruning.path_points,
          file=_path_file(ctx, p, prefix))
      rec.update({prefix + k: path[k] for k in ("barrier_test",
                                                "barrier_train")})
    return recs

  def summarize(self, ctx, done: list[method_lib.Done]) -> dict:
    rounds: dict[int, dict] = {}
    for d in done:
      rec = _aggregate(d.records)
      if d.coords["kind"] == "ticket":
        rounds[d.coords["round"]] = rec
      elif d.coords["kind"] == COPY:
        rounds[d.coords["round"]]["stability"] = rec
      else:
        ticket = rounds[d.coords["round"]]
        ticket.setdefault("controls", {})[d.coords["kind"]] = rec
        ticket["time_s"] += rec["time_s"]
    return {"rounds": list(rounds.values())}

  def report(self, ctx, done: method_lib.Done) -> method_lib.Report | None:
    """After the last group of a round: the round's line and scalars."""
    r = done.coords["round"]
    ctx.state["round_s"] = ctx.state.get("round_s", 0.0) + done.time_s
    if [c for c in ctx.grid if c["round"] == r][-1] != done.coords:
      return None
    rec = self.summarize(ctx, [d for d in ctx.done.values()
                               if d.coords["round"] == r])["rounds"][0]
    ctl = "".join(f"  {k} {_accuracy(c)}"
                  for k, c in rec.get("controls", {}).items())
    if "stability" in rec:
      ctl += f"  barrier {rec['stability']['barrier_test']:.4f}"
    if "level_barrier_test" in rec:
      ctl += f"  level barrier {rec['level_barrier_test']:.4f}"
    scalars = {"density": rec["density"],
               "ticket_test_accuracy": rec["test_accuracy"],
               **{f"{k}_test_accuracy": c["test_accuracy"]
                  for k, c in rec.get("controls", {}).items()}}
    line = (f"round {r:2d}/{ctx.config.pruning.rounds}  density "
            f"{rec['density']:.4f}  ticket {_accuracy(rec)}{ctl}  "
            f"({ctx.state.pop('round_s'):.1f} s)")
    return method_lib.Report(line, scalars, r, record=rec)


imp_path = tickets.imp_path

"""Instability analysis and linear mode connectivity (Frankle, Dziugaite, Roy
& Carbin 2020, "Linear Mode Connectivity and the Lottery Ticket Hypothesis"):
library functions and a method plug-in (`lottery.method`).

A network is *stable* to SGD noise at step k when two copies trained from its
weights at step k, with the same mask and different data orders (and
augmentation), end in minima joined by a linear path of low error. For every
rewind step k of `stability.steps` and every source mask of
`stability.sources` (the dense network, or a ticket of another workdir by its
coordinates), each replicate i

  1. trains the dense network from its initialization (seed seeds.init + i,
     data seed seeds.data + i) for k steps (a 'parent' group per k, shared by
     every source; k = 0 is the initialization itself);
  2. trains two copies of mask ⊙ W_k from step k to training.steps, copy c
     with data seed `copy_data_seed(config, i, c)` (copy 0 continues the
     parent's own order), both in one compiled program (replicates), with a
     fresh optimizer state and the learning-rate schedule from step k;
  3. evaluates the error and loss on the training and test sets at
     `stability.points` evenly spaced points of the linear path between the
     copies' trained weights (all points in one compiled program), and their
     error barrier: the maximum of the error over the path minus the mean of
     the errors of the two end points (Frankle et al.'s instability; stable
     when below 2%).

The pruned weights are 0 at both ends, so they stay 0 along the path. A
model with BatchNorm has the running statistics of every point of the path
recomputed (`recompute_statistics`) over the training set before that point
is evaluated: an interpolated network's statistics are neither end's
(`stability.recompute_statistics`, on by default).

The first layer's output is linear in alpha: it reads the input, before any
other parameter, and is affine in its own (a Dense or conv layer), so at
alpha it is (1 - alpha) f(x; a) + alpha f(x; b). With
`stability.linear_input` (on by default) and a model that names that layer
(its module's `input_layer()`, as the models of `lottery.models` do), the
path computes f(x; a) and f(x; b) once for all points instead of the layer
at every point: LeNet-300-100 spends 88% of its forward pass there. At the
ends the layer's output is exact ((1 - 0) f(x; a) + 0 f(x; b) is f(x; a));
the networks' outputs differ from their direct evaluation by float rounding
at most (XLA may fuse the two programs differently; the MLP paths of the
tests are unchanged bit for bit at the ends). Each path in the records states both: 'recomputed_statistics' and
'input_layer' (the layer computed once, or None).

The points run in one compiled program, `stability.path_batch` of them
vmapped together in each step of a loop over the path (`jax.lax.map`). By
default (0) a model without convolutions takes all points in one vmap and a
model with convolutions one point a step: vmapped over the points, a
convolution's kernel differs per point and becomes one grouped convolution,
which ran ResNet-20's path 4x slower than one point at a time on a CPU
(docs/performance.md). Records state the points vmapped together in each
step: 'path_batch'.

Coordinates: parents {'source': 'parent', 'k': k, 'seed': i, 'copy': 0};
copies {'source': s, 'k': k, 'seed': i, 'copy': c} --
`lottery.load_ticket(workdir, source='dense', k=100, copy=1, seed=0)`.
summary.json: {'pairs': [{'source', 'k', 'seed', 'density', 'test_accuracy'
(both ends), 'barrier_test', 'barrier_train', 'path': {'alpha',
'test_error', 'test_loss', 'train_error', 'train_loss',
'recomputed_statistics', 'input_layer', 'path_batch'}, 'copies': [the two
tickets' records]}, ...]}.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pathlib
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lottery import checkpoint
from lottery import config as config_lib
from lottery import data as data_lib
from lottery import driver
from lottery import loop as loop_lib
from lottery import masks as masks_lib
from lottery import method as method_lib
from lottery import runs
from lottery import step as step_lib
from lottery import tickets
from lottery import workdir as workdir_lib
from lottery import xla_options
from lottery.errors import LotteryError
from lottery.errors import refield

__all__ = ["Stability", "barrier", "copy_data_seed", "evaluate_path",
           "input_layer_of", "interpolate", "linear_input", "parse_source",
           "path_metrics",
           "recipe", "recompute_statistics", "run", "statistics_batches",
           "summary"]

PARENT = "parent"
DENSE = "dense"
PATH_FILE = "path.json"



# The `stability` block of the config schema (`lottery.config`).
def _stability_steps(f, v, c) -> None:
  if not isinstance(v, (tuple, list)) or not v:
    config_lib.fail(f, v, "must be a non-empty tuple of steps, e.g. (0, 100)")
  for x in v:
    config_lib.check_int(f, x, 0)
  if list(v) != sorted(set(v)):
    config_lib.fail(f, v, "must be increasing steps")


def _stability_sources(f, v, c) -> None:
  if not isinstance(v, (tuple, list)) or not v:
    config_lib.fail(f, v, "must be a non-empty tuple, e.g. ('dense', 'round=4')")
  for x in v:
    config_lib.check_str(f, x)
  parsed = [parse_source(x, field=f) for x in v]
  if any(p in parsed[:i] for i, p in enumerate(parsed)):
    config_lib.fail(f, v, "must not repeat a source")


# Instability analysis (lottery.stability, Frankle et al. 2020): for each
# rewind step k and source mask, two copies of the network at step k of
# the dense run train to the end with different data orders; the error
# barrier along the linear path between them measures their instability.
config_lib.read_when("stability.source_workdir",
                     lambda c: any(x != DENSE for x in c["stability.sources"]))


config_lib.register_block(
    "stability",
    dict(
        steps=(0, 25, 100, 250, 500),  # Rewind steps k, each < training.steps.
        # 'dense', or coordinates of a ticket of source_workdir ('round=4',
        # 'method=snip,check=None,target_density=0.1'); replicate i takes the
        # source's seed i.
        sources=("dense",),
        source_workdir="",  # The workdir of the source tickets.
        points=30,  # Evenly spaced points of the path, ends included.
        # Both copies on the same data order (a sanity check: barrier 0).
        same_data=False,
        # Recompute each point's running statistics (models with BatchNorm).
        recompute_statistics=True,
        # The model's input layer once per end, not at every point.
        linear_input=True,
        # Points vmapped together per step of the path's loop (0: all for a
        # model without convolutions, 1 for a model with them).
        path_batch=0,
    ),
    rules={
        "stability.steps": _stability_steps,
        "stability.sources": _stability_sources,
        "stability.source_workdir": config_lib.string,
        # The ends and at least one point between them.
        "stability.points": config_lib.count(3, 10_000),
        "stability.same_data": config_lib.boolean,
        "stability.recompute_statistics": config_lib.boolean,
        "stability.linear_input": config_lib.boolean,
        "stability.path_batch": config_lib.count(0, 10_000),
    },
    help={
        "stability.steps": "rewind steps k whose copies are compared",
        "stability.sources": "'dense', or coordinates of tickets of source_workdir ('round=4')",
        "stability.source_workdir": "the workdir of the source tickets",
        "stability.points": "evenly spaced points of the linear path, ends included",
        "stability.same_data": "both copies on the same data order (sanity check: barrier 0)",
        "stability.recompute_statistics": "recompute each point's BatchNorm statistics on training batches",
        "stability.linear_input": "the input layer's output once per end, combined at each point",
        "stability.path_batch": "points vmapped together per step of the path's loop (0: all without convolutions, 1 with)",
    })


def interpolate(a: Any, b: Any, alpha: float | jax.Array,
                mask: Any = None) -> Any:
  """(1 - alpha) * a + alpha * b, leaf by leaf; with `mask` (a mask pytree,
  None where not prunable), pruned weights are exactly 0 at every alpha."""
  out = jax.tree.map(lambda x, y: (1 - alpha) * x + alpha * y, a, b)
  return out if mask is None else masks_lib.apply_mask(mask, out)


def recompute_statistics(apply_fn: Callable[..., Any], params: Any,
                         model_state: Any, xs: jax.Array) -> Any:
  """The running statistics of the network `params`, recomputed: the mean
  over the batches `xs` (batches, B, ...) of each batch's statistics, as the
  training-mode forward pass computes them (PyTorch's `update_bn` with a
  cumulative average). Jit- and vmap-friendly.

  The model state must be exponential moving averages of batch statistics
  (flax's BatchNorm: new = m * old + (1 - m) * batch); its momentum m is
  read off the update itself (from a state of zeros and one of ones on the
  first batch), so any momentum works. The interpolated networks of a path
  need it: their statistics are neither end's.
  """
  zeros = jax.tree.map(jnp.zeros_like, model_state)
  ones = jax.tree.map(jnp.ones_like, model_state)

  def scaled(x):  # (1 - m) * the batch's statistics.
    return apply_fn(params, zeros, x, train=True)[1]

  first = scaled(xs[0])
  momentum = jax.tree.map(jnp.subtract,
                          apply_fn(params, ones, xs[0], train=True)[1], first)
  total, _ = jax.lax.scan(
      lambda t, x: (jax.tree.map(jnp.add, t, scaled(x)), None), first, xs[1:])
  return jax.tree.map(lambda t, m: t / (xs.shape[0] * (1 - m)), total,
                      momentum)


def input_layer_of(model: Any) -> str | None:
  """The layer a model names as its input layer (`input_layer()` of its
  module: the first layer, reading the input before any other parameter is
  used, affine in its own parameters), or None."""
  fn = getattr(model, "input_layer", None)
  return None if fn is None else fn()


def linear_input(layer: str, a: Any, b: Any, alpha: float | jax.Array):
  """A context in which the module at path `layer` ('fc1', 'block/conv')
  returns (1 - alpha) f(x; a) + alpha f(x; b), its outputs under the two
  ends' parameters, instead of f(x; (1 - alpha) a + alpha b): the same for
  an affine layer, up to float rounding. Under `jax.vmap` over alpha, the
  two outputs do not depend on alpha and are computed once.

  Applies while a model's forward pass is traced inside it (flax's
  `nn.intercept_methods`); trace it under `jax.jit` anew each time (not a
  cached jitted function traced outside the context).
  """
  path = tuple(layer.split("/"))
  ends = []
  for params in (a, b):
    for name in path:
      params = params[name]
    ends.append(params)

  def intercept(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name != "__call__" or module.path != path:
      return next_fun(*args, **kwargs)
    plain = module.clone(parent=None)
    ya, yb = (plain.apply({"params": p}, *args, **kwargs) for p in ends)
    return (1 - alpha) * ya + alpha * yb
  return nn.intercept_methods(intercept)


@xla_options.jit(static_argnames=("eval_fn", "apply_fn", "input_layer",
                                  "batch"))
def _path(eval_fn, apply_fn, a, b, model_state, mask, alphas, sets,
          stats_xs, input_layer=None, batch=0):
  if input_layer is not None and mask is not None:
    a, b = masks_lib.apply_mask(mask, a), masks_lib.apply_mask(mask, b)

  def one(alpha):
    params = interpolate(a, b, alpha, mask)
    state = model_state
    if input_layer is None:
      context = contextlib.nullcontext()
    else:
      context = linear_input(input_layer, a, b, alpha)
    with context:
      if stats_xs is not None:
        state = recompute_statistics(apply_fn, params, model_state, stats_xs)
      return [eval_fn(params, state, *s) for s in sets]
  if batch == 0 or batch >= len(alphas):
    return jax.vmap(one)(alphas)
  return jax.lax.map(one, alphas, batch_size=None if batch == 1 else batch)


def path_batch(eval_fn: Callable[..., dict], params: Any, model_state: Any,
               batches: tuple) -> int:
  """The points `stability.path_batch=0` vmaps together: all of them (0)
  for a model without convolutions, 1 for a model with them (found in the
  evaluation's traced program; `batches` is one of `loop.eval_batches`)."""
  program = jax.make_jaxpr(eval_fn)(params, model_state, *batches)
  return 1 if "conv_general_dilated" in str(program) else 0


def statistics_batches(x: np.ndarray, batch_size: int) -> np.ndarray:
  """The whole batches of `x`, in order, (batches, batch_size, ...): the
  examples `recompute_statistics` averages over (a partial last batch would
  weigh its examples differently and is left out)."""
  n = len(x) // batch_size * batch_size
  if n == 0:
    raise LotteryError(f"training.batch_size: {batch_size} is more than the "
                       f"{len(x)} training examples the statistics are "
                       f"recomputed on")
  return x[:n].reshape((n // batch_size, batch_size) + x.shape[1:])


def evaluate_path(eval_fn: Callable[..., dict], a: Any, b: Any,
                  model_state: Any, mask: Any, x: np.ndarray, y: np.ndarray,
                  *, points: int = 30, eval_batch: int = 1000,
                  apply_fn: Callable[..., Any] | None = None,
                  stats_x: np.ndarray | None = None,
                  input_layer: str | None = None, batch: int = 0) -> dict:
  """Loss and error of the networks on the linear path from `a` to `b`.

  Args:
    eval_fn: `step.make_eval_step(apply_fn)`.
    a, b: the two parameter pytrees (the path's ends, alpha 0 and 1).
    model_state: the model state used at every point, or (with `stats_x`)
      the template of the recomputed one.
    mask: the mask both share (pruned weights stay 0), or None.
    x, y: the examples to evaluate on.
    points: evenly spaced alphas in [0, 1], ends included (the paper: 30).
    eval_batch: examples per evaluation batch.
    apply_fn, stats_x: with both, every point's running statistics are
      recomputed (`recompute_statistics`) over the batches `stats_x`
      (`statistics_batches`) before it is evaluated.
    input_layer: the model's input layer (`input_layer_of`), computed once
      per end and combined at each point (`linear_input`); None computes
      every point's network as it is.
    batch: points vmapped together in each step of the loop over the path
      (0: all of them at once; see `path_batch` for the records' default).

  Returns:
    {'alpha': [...], 'loss': [...], 'error': [...]} (Python floats), all
    points evaluated in one compiled program.
  """
  out = _evaluate_path(eval_fn, a, b, model_state, mask, [(x, y)],
                       points=points, eval_batch=eval_batch,
                       apply_fn=apply_fn, stats_x=stats_x,
                       input_layer=input_layer, batch=batch)
  return {"alpha": out[0]["alpha"], "loss": out[0]["loss"],
          "error": out[0]["error"]}


def _evaluate_path(eval_fn, a, b, model_state, mask, splits, *, points,
                   eval_batch=1000, apply_fn=None, stats_x=None,
                   input_layer=None, batch=0) -> list:
  """`evaluate_path` on several (x, y) sets at once: each point's
  statistics are recomputed once for all of them."""
  if points < 2:
    raise LotteryError(f"points: must be at least 2 (got {points!r})")
  if not isinstance(batch, int) or isinstance(batch, bool) or batch < 0:
    raise LotteryError(f"batch: must be a count of points >= 0 (0: all at "
                       f"once; got {batch!r})")
  if (apply_fn is None) != (stats_x is None):
    raise LotteryError("stats_x: recomputing statistics needs both apply_fn "
                       "and stats_x")
  alphas = np.linspace(0.0, 1.0, points, dtype=np.float32)
  sets = [loop_lib.eval_batches(x, y, eval_batch) for x, y in splits]
  ms = jax.device_get(_path(eval_fn, apply_fn, a, b, model_state, mask,
                            alphas, sets, stats_x,
                            input_layer=input_layer, batch=batch))
  return [{"alpha": [float(v) for v in alphas],
           "loss": [float(v) for v in m["loss"]],
           "error": [1.0 - float(v) for v in m["accuracy"]]} for m in ms]


def path_metrics(exp, a: Any, b: Any, model_state: Any, mask: Any, *,
                 points: int = 30, file: os.PathLike | None = None,
                 recompute: bool = True, linear: bool = True,
                 batch: int = 0) -> dict:
  """Train and test error and loss on the path from `a` to `b` (see
  `evaluate_path`) over the experiment's data, with the barriers: {'alpha',
  'test_error', 'test_loss', 'train_error', 'train_loss', 'barrier_test',
  'barrier_train', 'recomputed_statistics', 'input_layer', 'path_batch'}.

  With `recompute`, a model with running statistics (BatchNorm) has them
  recomputed at every point over the training set's whole batches of
  `training.batch_size`; with `linear`, the model's input layer
  (`input_layer_of`) is computed once per end (`linear_input`); `batch`
  points are vmapped together (0: `path_batch` picks). With
  `file`, computed once and kept there (a JSON file written atomically); a
  rerun reads it."""
  if file is not None and checkpoint.exists(file):
    return checkpoint.read_json(file)
  eval_fn = _eval_fn(exp.apply_fn)
  ds, out = exp.dataset, {}
  stats = {}
  if recompute and jax.tree.leaves(model_state):
    stats = dict(apply_fn=exp.apply_fn, stats_x=statistics_batches(
        ds.x_train, exp.config.training.batch_size))
  layer = input_layer_of(exp.model) if linear else None
  splits = (("test", ds.x_test, ds.y_test), ("train", ds.x_train, ds.y_train))
  if batch == 0:
    batch = path_batch(eval_fn, a, model_state,
                       loop_lib.eval_batches(ds.x_test[:1], ds.y_test[:1]))
  ms = _evaluate_path(eval_fn, a, b, model_state, mask,
                      [(x, y) for _, x, y in splits], points=points,
                      input_layer=layer, batch=batch, **stats)
  for (split, _, _), m in zip(splits, ms):
    out["alpha"] = m["alpha"]
    out[f"{split}_error"], out[f"{split}_loss"] = m["error"], m["loss"]
  out["barrier_test"] = barrier(out["test_error"])
  out["barrier_train"] = barrier(out["train_error"])
  out["recomputed_statistics"] = bool(stats)
  out["input_layer"] = layer
  out["path_batch"] = min(batch, points) if batch else points
  if file is not None:
    checkpoint.write_json(file, out)
  return out


@functools.lru_cache(maxsize=16)
def _eval_fn(apply_fn: Callable[..., Any]) -> Callable[..., dict]:
  """One evaluation function per model's apply function: the compiled path
  program is cached by it (the latest few models')."""
  return step_lib.make_eval_step(apply_fn)


def barrier(errors: list[float]) -> float:
  """The error barrier of a path: max over the path minus the mean of its
  two ends (Frankle et al. 2020's instability)."""
  return float(max(errors) - (errors[0] + errors[-1]) / 2)


def recipe(train: ml_collections.ConfigDict, steps: tuple[int, ...], *,
           points: int = 30) -> ml_collections.ConfigDict:
  """A stability config that trains as the recipe `train` does (its data,
  model, training and prunable weights, so that its dense run is `train`'s
  and its tickets' masks fit), at rewind steps `steps` on the dense
  network."""
  c = config_lib.base_config()
  c.method = "stability"
  for block in ("data", "model", "training"):
    c[block].update(train[block].to_dict())
  c.pruning.prunable = train.pruning.prunable
  c.stability.update(steps=tuple(steps), sources=(DENSE,), points=points)
  return c


def copy_data_seed(config: ml_collections.ConfigDict, replicate: int,
                   copy: int) -> int:
  """The data seed of copy `copy` (0 or 1) of replicate `replicate`: copy 0
  continues the parent's order (seeds.data + replicate); copy 1 takes
  seeds.data + seeds.num + replicate, or copy 0's with
  `stability.same_data` (the sanity check: a barrier of exactly 0)."""
  base = config.seeds.data + replicate
  if copy == 0 or config.stability.same_data:
    return base
  return base + config.seeds.num


def parse_source(spec: str, *, field: str = "stability.sources") -> dict:
  """'dense', or a source ticket's coordinates 'round=3' /
  'method=snip,check=None,target_density=0.1' as a dict (ints, floats, None
  and strings parsed)."""
  if spec == DENSE:
    return {}
  out = {}
  for item in spec.split(","):
    key, sep, value = (s.strip() for s in item.partition("="))
    if not sep or not key or not value:
      raise LotteryError(f"{field}: {spec!r} must be 'dense' or coordinates "
                         f"'name=value,...', e.g. 'round=3'")
    if key == "seed":
      raise LotteryError(f"{field}: {spec!r}: 'seed' is not a source "
                         f"coordinate (the replicate's seed is taken)")
    if key in ("source", "k", "copy"):
      raise LotteryError(
          f"{field}: {spec!r}: {key!r} is a stability pair's coordinate; a "
          f"pair's copies keep their source's mask: name that source (its "
          f"run's coordinates, e.g. 'round=3')")
    if key in out:
      raise LotteryError(f"{field}: {spec!r} gives {key!r} twice")
    out[key] = _value(value)
  return out


def _value(text: str):
  if text == "None":
    return None
  for kind in (int, float):
    try:
      return kind(text)
    except ValueError:
      pass
  return text


def summary(workdir) -> dict:
  """The run's summary.json ({'pairs': [...], 'finished': bool})."""
  return tickets.summary(workdir)


def run(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
        progress=None, log: Callable[[str], None] | None = None,
        log_steps: bool = False) -> dict:
  """Runs (or resumes) an instability analysis (see the module doc)."""
  return driver.run(config, workdir, method="stability", progress=progress,
                    log=log, log_steps=log_steps)


# What makes a source run's tickets masks of this run's network: the same
# model and initialization (replicate i's ticket is a mask of replicate i's
# init), on the same data (`data.name` and the data's fingerprint).
_SOURCE_FIELDS = ("seeds.init", "data.name")


def _model_description(config: ml_collections.ConfigDict) -> tuple[Any, str]:
  """(the model `config` builds, unbound, or its name and options where it
  builds none; a description: its name and the options set)."""
  from lottery import models  # pylint: disable=g-import-not-at-top
  from lottery.experiment import model_options  # pylint: disable=g-import-not-at-top
  name, options = config.model.name, model_options(config)
  described = repr(name) + (f" {options}" if options else "")
  try:  # The module itself: 'resnet' at depth 20 is 'resnet20'.
    return models.get(name, 10, **options), described
  except LotteryError:
    return (name, sorted(options.items())), described


def training_differences(config: ml_collections.ConfigDict,
                         source: ml_collections.ConfigDict) -> list[str]:
  """'X there, Y here' for what makes the source run's dense run reach step k
  (the largest of `stability.steps`) on other weights than this run's: its
  learning rates up to k, the optimizer fields it reads, the batch, label
  smoothing, data order (seeds.data), augmentation and the examples held out
  for validation (data.validation_size). How long it trained
  on, evaluated or saved does not count (a field its config.json predates
  counts at its default)."""
  from lottery import optim  # pylint: disable=g-import-not-at-top
  ours = config.training
  try:
    theirs = config_lib.complete(source).training
  except LotteryError:  # A damaged config.json.
    return ["its training block (unreadable)"]
  fields = ["training.optimizer", "training.batch_size",
            "training.label_smoothing", "seeds.data", "data.augment",
            "data.crop", "data.validation_size"]
  if "sgd" in (ours.optimizer, theirs.optimizer):
    fields += ["training.momentum", "training.nesterov"]
  if ours.weight_decay or theirs.weight_decay:
    fields += ["training.weight_decay", "training.weight_decay_on"]
  out = [f"{field} {there!r} there, {here!r} here"
         for field, there, here in _values(config, source, fields)
         if here != there]
  k = max(config.stability.steps, default=0)
  if k:
    try:
      same = np.array_equal(*(optim.learning_rates(optim.make_schedule(t), 0,
                                                   k) for t in (theirs, ours)))
    except (LotteryError, TypeError, ValueError):  # A damaged config.json.
      same = False
    if not same:
      out.append(f"the learning rates of steps 0..{k - 1}")
  return out


def _values(config: ml_collections.ConfigDict,
            source: ml_collections.ConfigDict, fields) -> list[tuple]:
  """(field, the source run's value, this run's) for flat `fields`; a
  field the source's config.json predates at its default."""
  base = config_lib.base_config()
  out = []
  for field in fields:
    block, key = field.split(".")
    out.append((field, source.get(block, {}).get(key, base[block][key]),
                config[block][key]))
  return out


def _check_source_run(config: ml_collections.ConfigDict,
                      source: ml_collections.ConfigDict, wd: str) -> None:
  """Refuses, in one line, a source run whose tickets are masks of another
  network: its model (compared as built: options at their defaults count
  as unset), seeds.init or dataset differ from this run's (a field its
  config.json predates counts at its default; the dataset by the
  fingerprint its facts.json records). Its training may differ (a ticket
  can be trained for other steps)."""
  diffs = []
  (theirs, described), (ours, own) = (_model_description(c)
                                      for c in (source, config))
  if theirs != ours:
    diffs.append(f"the model {described} there, {own} here")
  diffs += [f"{field} {there!r} there, {here!r} here"
            for field, there, here in _values(config, source, _SOURCE_FIELDS)
            if here != there]
  try:
    facts = checkpoint.read_json(pathlib.Path(wd) / workdir_lib.FACTS_FILE,
                                 unverified_ok=True)
  except (OSError, ValueError):
    facts = {}  # A run that predates facts.json: its data is not checked.
  facts = facts if isinstance(facts, dict) else {}
  if not diffs and any(
      key in facts and facts[key] != fn(config.data) for key, fn in
      (("data_fingerprint", data_lib.fingerprint),
       ("data_contents", data_lib.contents))):
    diffs.append("the data's fingerprint")
  if diffs:
    raise LotteryError(
        f"stability.source_workdir: its tickets are masks of another network "
        f"({'; '.join(diffs)}); run the analysis with the source run's model, "
        f"seeds.init and data (got {wd!r})")


def _same_mask(a: Any, b: Any) -> bool:
  """Whether two masks keep the same weights of the same leaves."""
  fa, fb = masks_lib.named_leaves(a), masks_lib.named_leaves(b)
  return fa.keys() == fb.keys() and all(
      (fa[k] is None) == (fb[k] is None) and
      (fa[k] is None or np.array_equal(np.asarray(fa[k], bool),
                                       np.asarray(fb[k], bool)))
      for k in fa)


@method_lib.register
class Stability(method_lib.Method):
  """The instability analysis as a method plug-in (see the module doc)."""

  name = "stability"
  fields = ("pruning.prunable", "stability")
  summary_key = "pairs"

  def check(self, config: ml_collections.ConfigDict) -> None:
    config_lib.validate(config)
    s, steps = config.stability, config.training.steps
    for k in s.steps:
      if k >= steps:
        raise LotteryError(f"stability.steps: {k} is not below "
                           f"training.steps={steps} (got {tuple(s.steps)})")
    sources = [parse_source(x) for x in s.sources]
    if any(sources) and not s.source_workdir:
      raise LotteryError("stability.source_workdir: set it to the workdir of "
                         f"the tickets {tuple(s.sources)} (got '')")
    if s.source_workdir and not any(sources):
      raise LotteryError(f"stability.source_workdir: no source names a ticket "
                         f"of it (stability.sources={tuple(s.sources)}); add "
                         f"their coordinates, e.g. 'round=4', or leave it '' "
                         f"(got {s.source_workdir!r})")
    if not s.same_data:
      config_lib.check_copy_seeds("seeds.data", config.seeds.data,
                                  {f"seeds.{k}": config.seeds[k]
                                   for k in ("data", "num")})

  def stacked(self, config: ml_collections.ConfigDict) -> int:
    """One replicate: its pair of copies, so that on two devices the copies
    train side by side, one on each (the parent group's single job runs
    whole on both). Several: seeds.num, which every group's jobs (n parents,
    2n copies) split evenly across."""
    return 2 if config.seeds.num == 1 else config.seeds.num

  def before_claim(self, ctx: method_lib.Context) -> None:
    s = ctx.config.stability
    # Every source ticket exists and fits the model, before anything runs.
    for spec in s.sources:
      for i in range(ctx.replicates):
        self._source_mask(ctx, spec, i)

  def _source_mask(self, ctx, spec: str, i: int):
    key = ("mask", spec, i)
    if key not in ctx.state:
      coords = parse_source(spec)
      if not coords:
        mask = ctx.exp.dense_mask
      else:
        wd = ctx.config.stability.source_workdir
        if not pathlib.Path(wd).is_dir():
          raise LotteryError(f"stability.source_workdir: {wd!r} is not a "
                             f"workdir")
        try:
          source = runs.load_config(wd)
        except LotteryError as e:  # One line, naming this field.
          raise refield(e, "stability.source_workdir") from None
        if source.get("method") == "stability":
          raise LotteryError(
              f"stability.source_workdir: {wd!r} is a stability analysis, "
              f"whose copies are not sparse tickets; give the workdir of "
              f"the IMP, pruning-at-init or sparse run the tickets are of")
        _check_source_run(ctx.config, source, wd)
        # Every source is of this one workdir: its training is noted once.
        differences = [] if ctx.state.get("source_noted") else \
            training_differences(ctx.config, source)
        ctx.state["source_noted"] = True
        if differences:
          ctx.progress.info(
              f"note: stability.source_workdir trained otherwise "
              f"({'; '.join(differences)}): its tickets' masks were found on "
              f"other weights than this run's at step k")
        try:
          t = tickets.load_ticket(wd, **coords, seed=i,
                                  like=ctx.exp.init_params)
        except LotteryError as e:
          raise LotteryError(f"stability.sources: {spec!r} (seed {i}) names "
                             f"no ticket of {wd!r}: "
                             f"{str(e).partition(': ')[2]}") from None
        mask = t.mask
      ctx.state[key] = mask
    return ctx.state[key]

  def grid(self, ctx: method_lib.Context) -> list[dict]:
    s = ctx.config.stability
    out = [{"source": PARENT, "k": k} for k in s.steps if k > 0]
    out += [{"source": src, "k": k} for src in s.sources for k in s.steps]
    return out

  def directory(self, coords: dict) -> str:
    src = coords["source"].replace("/", "_").replace("=", "_").replace(",",
                                                                       "__")
    return f"stability/{src}/k_{coords['k']}"

  def replicas(self, ctx, coords: dict) -> list[method_lib.Replica]:
    n = ctx.replicates
    if coords["source"] == PARENT:
      return [method_lib.Replica({"seed": i, "copy": 0},
                                 ctx.config.seeds.data + i) for i in range(n)]
    # Ticket directories seed_<i>/copy_<c>; the path's evaluation is kept in
    # seed_<i>/path.json.
    return [method_lib.Replica({"seed": i, "copy": c},
                               copy_data_seed(ctx.config, i, c))
            for i in range(n) for c in (0, 1)]

  def start(self, ctx: method_lib.Context,
            coords: dict) -> method_lib.GroupStart:
    k, n = coords["k"], ctx.replicates
    if coords["source"] == PARENT:
      return method_lib.GroupStart(
          [method_lib.Start(ctx.exp.dense_mask, *ctx.init(i))
           for i in range(n)], stop=k)
    if k == 0:
      weights = [ctx.init(i) for i in range(n)]
    else:
      parents = ctx.tickets({"source": PARENT, "k": k})
      weights = [(t.trained_params, t.model_state) for t in parents]
    self._check_source_unchanged(ctx, coords["source"])
    starts = []
    for i in range(n):
      mask = self._source_mask(ctx, coords["source"], i)
      starts += [method_lib.Start(mask, *weights[i])] * 2
    return method_lib.GroupStart(starts, start_step=k)

  def _check_source_unchanged(self, ctx, source: str) -> None:
    """Refuses a resumed run whose source tickets changed since its finished
    groups of `source` trained on them (the source workdir run again):
    their copies' masks are the source masks they started from."""
    if ctx.state.get(("source_checked", source)) or not parse_source(source):
      return
    ctx.state[("source_checked", source)] = True
    for k in ctx.config.stability.steps:
      done = {"source": source, "k": k}
      if not ctx.is_finished(done):
        continue
      copies = ctx.tickets(done)
      for i in range(ctx.replicates):
        now = self._source_mask(ctx, source, i)
        if not _same_mask(copies[2 * i].mask, now):
          raise LotteryError(
              f"stability.source_workdir: its ticket {source!r} (seed {i}) "
              f"is not the mask this run's finished copies at k={k} started "
              f"from: the source run changed since this run began; use a "
              f"new --workdir (or restore the source run)")

  def record(self, ctx, done: method_lib.Done) -> list[dict]:
    copies = super().record(ctx, done)
    if done.coords["source"] == PARENT:
      return copies
    out = []
    for i in range(ctx.replicates):
      a, b = done.tickets[2 * i], done.tickets[2 * i + 1]
      path = self._path(ctx, done.paths[2 * i], a, b)
      pair = copies[2 * i:2 * i + 2]
      out.append({
          "source": done.coords["source"], "k": done.coords["k"], "seed": i,
          "density": pair[0]["density"],
          "test_accuracy": [p["test_accuracy"] for p in pair],
          "barrier_test": path.pop("barrier_test"),
          "barrier_train": path.pop("barrier_train"),
          "path": path, "copies": pair})
    return out

  def verify_finished(self, ctx, coords: dict) -> None:
    # A pair's path.json, read (verified) where it was written.
    if coords["source"] == PARENT:
      return
    for copy0 in ctx.paths(coords)[::2]:
      file = self._path_file(ctx, copy0)
      if checkpoint.exists(file):
        checkpoint.read_json(file)

  def _path_file(self, ctx, copy0_path: str) -> pathlib.Path:
    return pathlib.Path(ctx.workdir) / pathlib.Path(copy0_path).parent / (
        PATH_FILE)

  def _path(self, ctx, copy0_path: str, a, b) -> dict:
    """The pair's path evaluation, computed once and kept beside its
    tickets (seed_<i>/path.json)."""
    return path_metrics(ctx.exp, a.trained_params, b.trained_params,
                        a.model_state, a.mask,
                        points=ctx.config.stability.points,
                        file=self._path_file(ctx, copy0_path),
                        recompute=ctx.config.stability.recompute_statistics,
                        linear=ctx.config.stability.linear_input,
                        batch=ctx.config.stability.path_batch)

  def summarize(self, ctx, done: list[method_lib.Done]) -> dict:
    return {"pairs": [r for d in done if d.coords["source"] != PARENT
                      for r in d.records]}

  def report(self, ctx, done: method_lib.Done) -> method_lib.Report:
    c = done.coords
    if c["source"] == PARENT:
      return method_lib.Report(f"parent k={c['k']}  ({done.time_s:.1f} s)")
    b = np.asarray([r["barrier_test"] for r in done.records])
    spread = f" ± {b.std():.4f}" if len(b) > 1 else ""
    return method_lib.Report(
        f"{c['source']:>10s} k={c['k']:<6d} density "
        f"{done.records[0]['density']:.4f}  test barrier {b.mean():.4f}"
        f"{spread}  ({done.time_s:.1f} s)")

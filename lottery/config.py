"""The config schema: every field with its default, and its validation.

Recipe files in configs/ start from `base_config()` and change what their
paper changes. `validate` checks every field before any long work and raises a
`LotteryError` naming the field and value.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

import ml_collections

from lottery import controls as controls_lib
from lottery import data as data_lib
from lottery import distributions
from lottery import masks
from lottery import models
from lottery import optim
from lottery import pruning
from lottery import schedules
from lottery import scores
from lottery.errors import LotteryError

RESETS = ("rewind", "lr_rewind", "finetune")
# The default controls; any name registered in lottery.controls is allowed.
CONTROLS = ("reinit", "random_prune")


def base_config() -> ml_collections.ConfigDict:
  """All fields, with the defaults of the MNIST-1D experiment."""
  c = ml_collections.ConfigDict()
  # The method this recipe runs (a plug-in of lottery.method): imp | pai |
  # sparse. `python -m experiments.run` runs any; experiments.imp, .pai and
  # .sparse run their own.
  c.method = "imp"
  # Separate seeds: weight init, data order, and the randomness of controls
  # and random scores. Keys are derived with fold_in, never reused.
  # seeds.num replicates train together in one compiled program; replicate i
  # uses init + i, data + i and control + i.
  c.seeds = dict(init=0, data=0, control=0, num=1)

  c.data = dict(
      name="mnist1d",  # mnist1d | npz | mnist | fashion_mnist | cifar10 | ...
      data_dir="",  # TFDS data_dir ('' = TFDS's default).
      path="",  # .npz file for name='npz'.
      cache_dir="",  # MNIST-1D cache ('' = $LOTTERY_CACHE or ~/.cache/lottery).
      # Training examples held out for validation (a fixed subset); with it,
      # metrics include the early-stopping step and its test accuracy.
      validation_size=0,
      # Keep the training set on the accelerator when it fits in half its
      # memory; otherwise (or if False) gather each call's batches on the host.
      on_device=True,
      # On-device batch augmentation, keyed by (data seed, step): 'none' or
      # 'crop_flip' (CIFAR: 4-pixel padded random crop, horizontal flip).
      augment="none",
  )
  # Options of models that take them (ResNet depth and width); 0 = the
  # model's default.
  c.model = dict(name="mnist1d_mlp", depth=0, width=0)

  c.training = dict(
      steps=1500,  # Steps of one training run (every round and control).
      batch_size=100,
      optimizer="adam",  # sgd | adam | adamw
      learning_rate=2e-2,
      momentum=0.0,  # sgd only.
      nesterov=False,
      weight_decay=0.0,
      schedule="constant",  # constant | step | cosine
      lr_boundaries=(),  # Steps where 'step' multiplies the rate by lr_decay.
      lr_decay=0.1,
      warmup_steps=0,
      eval_every=100,  # Steps between test-set evaluations.
      checkpoint_every=500,  # Steps between resumable mid-run checkpoints.
      # How a chunk of steps runs: scan | unroll | python | auto (python for
      # models with convolutions on the CPU, scan elsewhere).
      loop="auto",
  )

  c.pruning = dict(
      fraction=0.2,  # Fraction of surviving prunable weights removed per round.
      rounds=10,  # Pruning rounds after the dense round 0.
      # geometric: each round removes `fraction` of the survivors (density
      # (1 - fraction)^r); linear: sparsity rises by `fraction` of all the
      # prunable weights per round (density 1 - r * fraction).
      schedule="geometric",
      scope="layerwise",  # layerwise | global | module (a layer's leaves)
      prunable=(".*kernel",),  # Regexes (re.fullmatch) over 'fc1/kernel'.
      layer_fractions="",  # Overrides 'regex=rate,...', e.g. 'out/kernel=0.1'.
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
      path_points=30,  # Evenly spaced points of those paths, ends included.
  )
  # Controls run every pruned round beside the ticket: 'reinit' (same mask,
  # fresh weights) and 'random_prune' (same per-layer densities, random
  # positions, the ticket's starting weights).
  c.controls = CONTROLS
  c.controls_every = 1  # Run the controls on every N-th round and the last.
  # Pruning at initialization (lottery.pai, experiments/pai.py): each method
  # (a score of lottery.scores) prunes the initial weights to each target
  # density in `iterations` rounds of the exponential schedule d^(k/n),
  # rescoring the masked network each round; the mask is then trained like
  # any ticket. `checks` are Frankle et al. 2021's sanity checks, run for
  # every method but 'random': shuffle (mask permuted within each layer),
  # reinit (same mask, fresh weights), invert (keep the lowest scores).
  c.pai = dict(
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
  )

  # Sparse training (lottery.sparse, python -m experiments.sparse): every
  # method x distribution x density x replicate, and a dense baseline. The
  # sparse leaves are those of pruning.prunable.
  c.sparse = dict(
      methods=SPARSE_METHODS,  # static | set | rigl | gmp
      densities=(0.1, 0.03),  # Target densities, each in (0, 1).
      # Per-layer densities: uniform | erk; a tuple runs each.
      distribution=("uniform", "erk"),
      update_every=100,  # Steps between mask updates (set, rigl, gmp).
      # set / rigl: fraction of each layer's active weights dropped and
      # regrown, cosine-annealed to 0 at end_fraction x training.steps.
      drop_fraction=0.3,
      end_fraction=0.75,
      # gmp: from dense to the target between these steps (cubic schedule);
      # end_step 0 = end_fraction x training.steps.
      begin_step=0,
      end_step=0,
  )
  # Instability analysis (lottery.stability, Frankle et al. 2020): for each
  # rewind step k and source mask, two copies of the network at step k of
  # the dense run train to the end with different data orders; the error
  # barrier along the linear path between them measures their instability.
  c.stability = dict(
      steps=(0, 25, 100, 250, 500),  # Rewind steps k, each < training.steps.
      # 'dense', or coordinates of a ticket of source_workdir ('round=4',
      # 'method=snip,check=None,target_density=0.1'); replicate i takes the
      # source's seed i.
      sources=("dense",),
      source_workdir="",  # The workdir of the source tickets.
      points=30,  # Evenly spaced points of the path, ends included.
      # Both copies on the same data order (a sanity check: barrier 0).
      same_data=False,
  )
  return c


# Bounds. Counts (steps, batch size, rounds, ...) stay below 10**9 so that a
# step or example index, plus an offset, never overflows the int32 counters of
# jax and optax (2**31 - 1 ~ 2.1e9). Seeds are in [0, 2**31): every consumer
# (jax.random.key, numpy) takes them without overflow or wrap-around. Rates
# (learning_rate, lr_decay) are at most 1e3 and weight_decay below 1e3: no
# optimizer here trains at a rate above ~10 (SGD on LeNet/Conv uses 0.1, Adam
# ~1e-3), so three orders of magnitude above that is room for odd
# parametrizations while a typo such as 1e30 (or inf) is refused here instead
# of turning the first step's weights into inf and being reported as a
# diverged run.
MAX_COUNT = 10**9
SEED_LIMIT = 2**31
MAX_REPLICATES = 1024
MAX_RATE = 1e3
LOOPS = ("auto", "scan", "unroll", "python")
_AUGMENTS_FALLBACK = ("none", "crop_flip")


def _fail(field: str, value, why: str) -> NoReturn:
  raise LotteryError(f"{field}: {why} (got {value!r})")


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _int(field: str, value, lo: int, hi: int = MAX_COUNT) -> None:
  """An integer in [lo, hi]."""
  if not _is_int(value) or not lo <= value <= hi:
    _fail(field, value, f"must be an integer in [{lo}, {hi}]")


def _real(field: str, value, lo: float, hi: float, *, lo_open: bool,
          hi_open: bool) -> None:
  """A finite real number in the interval given by lo, hi and openness."""
  interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
  if not _is_real(value):
    _fail(field, value, f"must be a number in {interval}")
  # Bounded intervals also refuse inf; NaN fails every comparison.
  if not ((value > lo if lo_open else value >= lo) and
          (value < hi if hi_open else value <= hi)):
    _fail(field, value, f"must be in {interval}")


def _choice(field: str, value, known) -> None:
  known = list(known)
  if not isinstance(value, str) or value not in known:
    _fail(field, value, f"must be one of {known}")


def _str(field: str, value) -> None:
  if not isinstance(value, str):
    _fail(field, value, "must be a string")


def _bool(field: str, value) -> None:
  if not isinstance(value, bool):
    _fail(field, value, "must be True or False")


# Rules: flattened field -> check(field, value, values), where `values` holds
# every field by its flattened name. `validate` runs them in this table's
# order, so a rule may rely on the fields above it (training.steps before
# training.warmup_steps). tests/test_validation.py checks that every field of
# base_config() has one; rules for fields it lacks are skipped.
_Rule = Callable[[str, Any, dict[str, Any]], None]


def _count(lo: int, hi: int = MAX_COUNT) -> _Rule:
  return lambda f, v, c: _int(f, v, lo, hi)


def _one_of(known: Callable[[], Sequence[str]]) -> _Rule:
  return lambda f, v, c: _choice(f, v, known())


def _string(f, v, c) -> None:
  _str(f, v)


def _boolean(f, v, c) -> None:
  _bool(f, v)


def _augment_names() -> Sequence[str]:
  try:
    from lottery import augment  # pylint: disable=g-import-not-at-top
  except ImportError:
    return _AUGMENTS_FALLBACK
  return augment.names()


def _data_path(f, v, c) -> None:
  _str(f, v)
  if c["data.name"] == "npz" and not v:
    _fail(f, v, "set it to an .npz file for data.name='npz'")


def _below_steps(f, v, c) -> None:
  _int(f, v, 0)
  steps = c["training.steps"]
  if v >= steps:
    _fail(f, v, f"must be below training.steps={steps}")


def _learning_rate(f, v, c) -> None:
  _real(f, v, 0, MAX_RATE, lo_open=True, hi_open=False)


def _momentum(f, v, c) -> None:
  _real(f, v, 0, 1, lo_open=False, hi_open=True)


def _weight_decay(f, v, c) -> None:
  _real(f, v, 0, MAX_RATE, lo_open=False, hi_open=True)


def _lr_boundaries(f, v, c) -> None:
  steps = c["training.steps"]
  b = list(v) if isinstance(v, (tuple, list)) else None
  if b is None or any(not _is_int(x) or not 0 < x < steps for x in b) or \
      b != sorted(set(b)):
    _fail(f, v, f"must be increasing integer steps in (0, {steps})")


def _fraction(f, v, c) -> None:
  _real(f, v, 0, 1, lo_open=True, hi_open=True)


def _rewind_step(f, v, c) -> None:
  _below_steps(f, v, c)
  reset = c["pruning.reset"]
  if v and reset != "rewind":
    _fail(f, v, f"only applies to pruning.reset='rewind', not {reset!r}")


def _prunable(f, v, c) -> None:
  if not isinstance(v, (tuple, list)) or not v or \
      not all(isinstance(p, str) and p for p in v):
    _fail(f, v, "must be a non-empty tuple of regexes")
  masks.compile_patterns(v, f)


def _layer_fractions(f, v, c) -> None:
  _str(f, v)
  pruning.parse_layer_fractions(v, field=f)


SCHEDULES = schedules.IMP_SCHEDULES  # ('geometric', 'linear')


def _schedule(f, v, c) -> None:
  _choice(f, v, SCHEDULES)
  if v != "linear":
    return
  rounds = c["pruning.rounds"]
  rates = [("pruning.fraction", c["pruning.fraction"])] + [
      (f"pruning.layer_fractions ({k})", r) for k, r in
      pruning.parse_layer_fractions(c["pruning.layer_fractions"]).items()]
  for name, rate in rates:
    if rounds * rate >= 1:
      _fail("pruning.rounds", rounds,
            f"with pruning.schedule='linear', rounds x {name}={rate} must "
            f"stay below 1 (density 1 - rounds x rate)")


def _controls(f, v, c) -> None:
  if not isinstance(v, (tuple, list)):
    _fail(f, v, "must be a tuple, e.g. ('reinit',)")
  for x in v:
    _choice(f, x, controls_lib.names())
  if len(set(v)) != len(v):
    _fail(f, v, "must not repeat a control")


def _seeds_num(f, v, c) -> None:
  _int(f, v, 1, MAX_REPLICATES)
  top = max(c[f"seeds.{k}"] for k in ("init", "data", "control")) + v - 1
  if top >= SEED_LIMIT:
    _fail(f, v, f"takes seeds up to {top}, past the limit {SEED_LIMIT - 1}")


# Pruning at initialization (the `pai` block).
PAI_CHECKS = ("shuffle", "reinit", "invert")
MAX_PAI_ITERATIONS = 10_000


def _distinct_tuple(f, v, what: str) -> list:
  if not isinstance(v, (tuple, list)):
    _fail(f, v, f"must be a tuple of {what}")
  if len(set(v)) != len(v):
    _fail(f, v, f"must not repeat {what}")
  return list(v)


def _pai_methods(f, v, c) -> None:
  if not _distinct_tuple(f, v, "scores"):
    _fail(f, v, "must name at least one score")
  for x in v:
    _choice(f, x, scores.all_names())


def _pai_densities(f, v, c) -> None:
  if not _distinct_tuple(f, v, "densities"):
    _fail(f, v, "must hold at least one density")
  for x in v:
    _real(f, x, 0, 1, lo_open=True, hi_open=True)


def _pai_checks(f, v, c) -> None:
  for x in _distinct_tuple(f, v, "checks"):
    _choice(f, x, PAI_CHECKS)


def parse_method_iterations(spec: str, *, field: str = "pai.method_iterations"
                            ) -> dict[str, int]:
  """Parses 'method=n,...' (e.g. 'synflow=100') into {method: n}."""
  _str(field, spec)
  out = {}
  for item in filter(None, (s.strip() for s in spec.split(","))):
    name, sep, n = item.partition("=")
    if not sep or not n.strip().isdigit():
      _fail(field, spec, "must be 'method=iterations,...', e.g. 'synflow=100'")
    name, n = name.strip(), int(n)
    _choice(field, name, scores.all_names())
    if not 1 <= n <= MAX_PAI_ITERATIONS:
      _fail(field, spec, f"iterations of {name!r} must be in "
            f"[1, {MAX_PAI_ITERATIONS}]")
    if name in out:
      _fail(field, spec, f"names {name!r} twice")
    out[name] = n
  return out


def _pai_method_iterations(f, v, c) -> None:
  parse_method_iterations(v, field=f)
# Sparse training's methods (lottery.sparse).
SPARSE_METHODS = ("static", "set", "rigl", "gmp")


def _names_tuple(f, v, known, example) -> tuple:
  """A non-empty tuple of distinct names from `known` (a lone name is
  allowed where `example` says so)."""
  if isinstance(v, str) and example is None:
    v = (v,)
  if not isinstance(v, (tuple, list)) or not v:
    _fail(f, v, f"must be a non-empty tuple, e.g. {example or (known[0],)!r}")
  for x in v:
    _choice(f, x, known)
  if len(set(v)) != len(v):
    _fail(f, v, "must not repeat a name")
  return tuple(v)


def _sparse_methods(f, v, c) -> None:
  from lottery import sparse_updates  # pylint: disable=g-import-not-at-top
  _names_tuple(f, v, sparse_updates.names(), ("rigl", "set"))


def _sparse_distribution(f, v, c) -> None:
  _names_tuple(f, v, distributions.names(), None)


def _sparse_densities(f, v, c) -> None:
  if not isinstance(v, (tuple, list)) or not v:
    _fail(f, v, "must be a non-empty tuple of densities in (0, 1), e.g. "
          "(0.1, 0.03)")
  for x in v:
    _real(f, x, 0, 1, lo_open=True, hi_open=True)
  if len(set(v)) != len(v):
    _fail(f, v, "must not repeat a density")


def _sparse_end_fraction(f, v, c) -> None:
  _real(f, v, 0, 1, lo_open=True, hi_open=False)


def _sparse_end_step(f, v, c) -> None:
  _int(f, v, 0)
  begin = c["sparse.begin_step"]
  if v and v <= begin:
    _fail(f, v, f"must be 0 (end_fraction x training.steps) or above "
          f"sparse.begin_step={begin}")
  # GMP changes the mask only at update steps: it reaches its target at
  # end_step only if that is one (else at the next, past its schedule). Only
  # GMP reads end_step; one past the last update in training is
  # `lottery.sparse.check`'s to refuse (it needs the whole config).
  every, steps = c["sparse.update_every"], c["training.steps"]
  if v % every and "gmp" in c["sparse.methods"] and \
      v <= (steps - 1) // every * every:
    near = sorted({x for x in (v // every * every, (v // every + 1) * every)
                   if x > begin})
    _fail(f, v, f"must be a multiple of sparse.update_every={every}, where "
          f"GMP's mask updates happen (e.g. "
          f"{' or '.join(map(str, near))})")


def _method_names() -> Sequence[str]:
  from lottery import method  # pylint: disable=g-import-not-at-top
  import lottery  # pylint: disable=g-import-not-at-top,unused-import  (registers the methods)
  return method.names()


def _stability_steps(f, v, c) -> None:
  if not isinstance(v, (tuple, list)) or not v:
    _fail(f, v, "must be a non-empty tuple of steps, e.g. (0, 100)")
  for x in v:
    _int(f, x, 0)
  if list(v) != sorted(set(v)):
    _fail(f, v, "must be increasing steps")


def _stability_sources(f, v, c) -> None:
  if not isinstance(v, (tuple, list)) or not v:
    _fail(f, v, "must be a non-empty tuple, e.g. ('dense', 'round=4')")
  for x in v:
    _str(f, x)
  if len(set(v)) != len(v):
    _fail(f, v, "must not repeat a source")


def _reset_names() -> Sequence[str]:
  from lottery import imp  # pylint: disable=g-import-not-at-top
  return imp.RESETS.names()


RULES: dict[str, _Rule] = {
    "method": _one_of(_method_names),
    "seeds.init": _count(0, SEED_LIMIT - 1),
    "seeds.data": _count(0, SEED_LIMIT - 1),
    "seeds.control": _count(0, SEED_LIMIT - 1),
    "seeds.num": _seeds_num,
    "data.name": _one_of(lambda: data_lib.NAMES),
    "data.data_dir": _string,
    "data.path": _data_path,
    "data.cache_dir": _string,
    "data.validation_size": _count(0),
    "data.on_device": _boolean,
    "data.augment": _one_of(_augment_names),
    "model.name": _one_of(models.names),
    "model.depth": _count(0),
    "model.width": _count(0),
    "training.steps": _count(1),
    "training.batch_size": _count(1),
    "training.optimizer": _one_of(lambda: optim.OPTIMIZERS),
    "training.learning_rate": _learning_rate,
    "training.momentum": _momentum,
    "training.nesterov": _boolean,
    "training.weight_decay": _weight_decay,
    "training.schedule": _one_of(lambda: optim.SCHEDULES),
    "training.lr_boundaries": _lr_boundaries,
    "training.lr_decay": _learning_rate,
    "training.warmup_steps": _below_steps,
    "training.eval_every": _count(1),
    "training.checkpoint_every": _count(0),
    "training.loop": _one_of(lambda: LOOPS),
    "pruning.fraction": _fraction,
    "pruning.rounds": _count(0),
    "pruning.scope": _one_of(lambda: pruning.SCOPES),
    "pruning.prunable": _prunable,
    "pruning.layer_fractions": _layer_fractions,
    "pruning.schedule": _schedule,
    "pruning.score": _one_of(scores.names),
    "pruning.reset": _one_of(_reset_names),
    "pruning.rewind_step": _rewind_step,
    "pruning.stability_every": _count(0),
    "pruning.level_barrier": _boolean,
    "pruning.path_points": _count(2, 10_000),
    "controls": _controls,
    "controls_every": _count(1),
    "pai.methods": _pai_methods,
    "pai.densities": _pai_densities,
    "pai.checks": _pai_checks,
    "pai.iterations": _count(1, MAX_PAI_ITERATIONS),
    "pai.method_iterations": _pai_method_iterations,
    "pai.scope": _one_of(lambda: pruning.SCOPES),
    "pai.batch_size": _count(1),
    "pai.dense": _boolean,
    "sparse.methods": _sparse_methods,
    "sparse.densities": _sparse_densities,
    "sparse.distribution": _sparse_distribution,
    "sparse.update_every": _count(1),
    "sparse.drop_fraction": _fraction,
    "sparse.end_fraction": _sparse_end_fraction,
    "sparse.begin_step": _count(0),
    "sparse.end_step": _sparse_end_step,
    "stability.steps": _stability_steps,
    "stability.sources": _stability_sources,
    "stability.source_workdir": _string,
    "stability.points": _count(2, 10_000),
    "stability.same_data": _boolean,
}


def _as_dict(node) -> dict | None:
  if isinstance(node, (ml_collections.ConfigDict,
                       ml_collections.FrozenConfigDict)):
    return node.to_dict()
  return dict(node) if isinstance(node, Mapping) else None


def _leaves(schema: dict, config: dict, prefix: str,
            out: dict[str, Any]) -> None:
  """Flattens `config` along `schema`, refusing unknown and missing fields."""
  for key in config:
    if key not in schema:
      _unknown(prefix + str(key))
  for key, sub in schema.items():
    name = prefix + key
    if key not in config:
      raise LotteryError(f"{name}: missing from the config (start from "
                         f"lottery.base_config(), which has every field)")
    value = config[key]
    if isinstance(sub, dict):
      value = _as_dict(value)
      if value is None:
        _fail(name, config[key], "must be a group of fields")
      _leaves(sub, value, name + ".", out)
    else:
      out[name] = value


def suggest(name: str, known: Sequence[str]) -> str | None:
  """The field of `known` a mistyped `name` most likely meant, or None.

  An abbreviation such as 'lr' or 'wd' is its words' initials (difflib
  alone would rank 'training.loop' above 'training.learning_rate' for
  'training.lr'); otherwise the closest spelling."""
  leaf = name.rpartition(".")[2]
  guess = [k for k in known if len(leaf) > 1 and
           "".join(w[0] for w in k.rpartition(".")[2].split("_")) == leaf and
           k.rpartition(".")[0] == name.rpartition(".")[0]]
  guess = guess or difflib.get_close_matches(name, list(known), n=1)
  return guess[0] if guess else None


def _unknown(name: str):
  known = schema_fields()
  known += sorted({k.rpartition(".")[0] for k in known} - {""})  # Groups.
  guess = suggest(name, known)
  hint = f" (did you mean {guess!r}?)" if guess else ""
  raise LotteryError(f"config: no field {name!r}{hint}")


def schema_fields() -> list[str]:
  """Every field of `base_config()`, flattened ('training.steps'), in order."""
  out: dict[str, Any] = {}
  _leaves(base_config().to_dict(), base_config().to_dict(), "", out)
  return list(out)


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks every field of `config` against `base_config()`'s schema.

  Raises:
    LotteryError: on the first unknown field ('config: no field ...'), missing
      field, value of a wrong type or out of its bounds (named by its field,
      e.g. 'training.learning_rate: ...').
  """
  config_dict = _as_dict(config)
  if config_dict is None:
    _fail("config", config, "must be a ConfigDict from lottery.base_config()")
  values: dict[str, Any] = {}
  _leaves(base_config().to_dict(), config_dict, "", values)
  # In the table's order, so that a rule may rely on the fields before it. A
  # schema field without a rule fails tests/test_validation.py.
  for name, rule in RULES.items():
    if name in values:
      rule(name, values[name], values)


# The blocks every method reads; a method adds its own (`Method.fields`).
SHARED = ("method", "seeds", "data", "model", "training")

# One line per field for --help (tests/test_config.py checks every field has one).
FIELD_HELP: dict[str, str] = {
    "method": "the method plug-in that runs this config (imp, pai, sparse, stability)",
    "seeds.init": "seed of the weights' initialization (replicate i: init + i)",
    "seeds.data": "seed of the batch order, augmentation and dropout (replicate i: data + i)",
    "seeds.control": "seed of controls, random scores and random masks (replicate i: control + i)",
    "seeds.num": "replicates trained together in one compiled program",
    "data.name": "dataset: mnist1d (generated offline), npz, or a TFDS name",
    "data.data_dir": "TFDS data_dir ('' = TFDS's default)",
    "data.path": "the .npz file for data.name='npz'",
    "data.cache_dir": "MNIST-1D cache ('' = $LOTTERY_CACHE or ~/.cache/lottery)",
    "data.validation_size": "training examples held out for validation (early stopping)",
    "data.on_device": "keep the training set on the accelerator when it fits in half its memory",
    "data.augment": "on-device batch augmentation keyed by (data seed, step)",
    "model.name": "the model, by its registered name",
    "model.depth": "depth of models that take one (ResNet); 0 = the model's default",
    "model.width": "width of models that take one; 0 = the model's default",
    "training.steps": "steps of one training run (every round, control and group)",
    "training.batch_size": "examples per step",
    "training.optimizer": "the optax optimizer, wrapped in keep_pruned",
    "training.learning_rate": "the peak learning rate",
    "training.momentum": "SGD's momentum",
    "training.nesterov": "SGD with Nesterov momentum",
    "training.weight_decay": "decoupled weight decay (adamw) or L2 added to the gradient (sgd)",
    "training.schedule": "learning-rate schedule",
    "training.lr_boundaries": "steps where the 'step' schedule multiplies the rate by lr_decay",
    "training.lr_decay": "the 'step' schedule's factor at each boundary",
    "training.warmup_steps": "steps of linear warm-up from 0",
    "training.eval_every": "steps between test-set evaluations",
    "training.checkpoint_every": "steps between resumable mid-run checkpoints",
    "training.loop": "how a chunk of steps runs (auto: python for conv models on the CPU, scan elsewhere)",
    "pruning.fraction": "fraction of the surviving prunable weights removed per round",
    "pruning.rounds": "pruning rounds after the dense round 0",
    "pruning.schedule": "geometric: density (1 - fraction)^r; linear: density 1 - r * fraction",
    "pruning.scope": "which weights are ranked together: each layer, all, or each module's leaves",
    "pruning.prunable": "regexes (re.fullmatch) over parameter paths such as 'fc1/kernel'",
    "pruning.layer_fractions": "per-layer rates 'regex=rate,...', e.g. 'out/kernel=0.1'",
    "pruning.score": "the importance score ranked by each round",
    "pruning.reset": "rewind: weights of step rewind_step; lr_rewind: replay the schedule; finetune: final rate",
    "pruning.rewind_step": "the step of round 0 whose weights later rounds rewind to",
    "pruning.stability_every": "every N-th round: the ticket's instability (a copy on another data order); 0: none",
    "pruning.level_barrier": "record the error barrier between successive rounds' trained networks",
    "pruning.path_points": "evenly spaced points of those linear paths, ends included",
    "controls": "controls trained beside each pruned round's ticket",
    "controls_every": "run the controls on every N-th round and on the last",
    "pai.methods": "scores that prune the initial weights",
    "pai.densities": "target densities, each in (0, 1)",
    "pai.checks": "Frankle et al. 2021's sanity checks, for every method but random",
    "pai.iterations": "pruning rounds d^(k/n) of every method not in method_iterations",
    "pai.method_iterations": "per-method rounds 'method=n,...'",
    "pai.scope": "rank all prunable weights together (global) or each layer",
    "pai.batch_size": "training examples the data-aware scores see",
    "pai.dense": "also train the dense network (method 'dense')",
    "sparse.methods": "sparse-training methods; a dense baseline always runs",
    "sparse.densities": "target densities, each in (0, 1)",
    "sparse.distribution": "per-layer densities (a tuple runs each)",
    "sparse.update_every": "steps between mask updates (set, rigl, gmp)",
    "sparse.drop_fraction": "set/rigl: fraction of active weights dropped and regrown, cosine-annealed",
    "sparse.end_fraction": "set/rigl: updates stop at end_fraction x training.steps (gmp's default end)",
    "sparse.begin_step": "gmp: the step pruning starts",
    "sparse.end_step": "gmp: the step it reaches the target (0 = end_fraction x training.steps)",
    "stability.steps": "rewind steps k whose copies are compared",
    "stability.sources": "'dense', or coordinates of tickets of source_workdir ('round=4')",
    "stability.source_workdir": "the workdir of the source tickets",
    "stability.points": "evenly spaced points of the linear path, ends included",
    "stability.same_data": "both copies on the same data order (sanity check: barrier 0)",
}


def _flat(config) -> dict[str, Any]:
  out: dict[str, Any] = {}
  def walk(d, prefix):
    for k, v in d.items():
      if isinstance(v, dict):
        walk(v, f"{prefix}{k}.")
      else:
        out[prefix + k] = v
  walk(_as_dict(config), "")
  return out


def _owns(fields: Sequence[str], name: str) -> bool:
  """Whether the field `name` is one of `fields` (blocks or fields)."""
  return any(name == f or name.startswith(f + ".") for f in fields)


def method_fields(fields: Sequence[str]) -> list[str]:
  """Every field of the schema a method with `fields` reads (the shared
  blocks and its own), flattened, in the schema's order."""
  return [n for n in schema_fields() if _owns((*SHARED, *fields), n)]


def complete(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` with every field of `base_config()`: the fields it lacks (a
  config.json holds only its method's) take their defaults.

  Raises:
    LotteryError: for a field the schema does not know (with the nearest
      name), or a value where a block belongs.
  """
  given = _as_dict(config)
  if given is None:
    _fail("config", config, "must be a ConfigDict from lottery.base_config()")
  full = base_config()

  def merge(node, values: dict, prefix: str) -> None:
    for key, value in values.items():
      name = prefix + key
      if key not in node:
        _unknown(name)
      if isinstance(node[key], ml_collections.ConfigDict):
        sub = _as_dict(value)
        if sub is None:
          _fail(name, value, "must be a group of fields")
        merge(node[key], sub, name + ".")
      else:
        with node.ignore_type():
          node[key] = value

  merge(full, given, "")
  return full


def for_method(config: ml_collections.ConfigDict, method: str,
               fields: Sequence[str]) -> ml_collections.ConfigDict:
  """The fields of `config` that method `method` reads (the shared blocks
  and `fields`): what its workdir's config.json and --help show.

  Raises:
    LotteryError: naming the first field of another method set to
      something other than its default (it would be silently ignored).
  """
  values, defaults = _flat(config), _flat(base_config())
  for name, value in values.items():
    if not _owns((*SHARED, *fields), name) and name in defaults and \
        _json(value) != _json(defaults[name]):
      _fail(name, value, f"is not a field of method {method!r}, which reads "
            f"{', '.join(fields)} beside the shared blocks; remove it or set "
            f"method")
  out = ml_collections.ConfigDict()
  full = _as_dict(config)
  for name in method_fields(fields):
    *parents, leaf = name.split(".")
    node, src = out, full
    for p in parents:
      if p not in node:
        node[p] = ml_collections.ConfigDict()
      node, src = node[p], src[p]
    node[leaf] = src[leaf]
  return out


def _json(value):
  return list(value) if isinstance(value, (tuple, list)) else value

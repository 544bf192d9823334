"""Sparse training: static, SET, RigL and gradual magnitude pruning, a method
plug-in (`lottery.method`) of the one driver (`lottery.driver`).

For every distribution x density x method of `config.sparse` (and a dense
baseline), `seeds.num` replicates train for `training.steps` steps:

  dense   all weights, for reference (method 'dense', distribution 'none',
          target_density 1.0).
  static  a random mask at the target density, fixed; in a run with N:M
          methods (below), a random `sparse.n_m` mask: their fixed baseline.
  set     the same random mask, changed every `update_every` steps by SET.
  rigl    the same random mask, changed every `update_every` steps by RigL.
  gmp     dense at the start, pruned by magnitude to the target along the
          cubic schedule of Zhu & Gupta 2017 between begin_step and end_step.
  nm      N:M sparse training (`sparse.n_m`, e.g. '2:4'): a random N:M mask
          (N of every M along each prunable leaf's reduction axis), changed
          every `update_every` steps by RigL with growth within each run of
          M (`sparse_updates.n_m_rigl`, which says how it differs from
          SR-STE); density N/M in every layer, so it takes
          `sparse.densities` = (N/M,) and the 'uniform' distribution. Not
          among the default methods.
  sr_ste  SR-STE (Zhou et al. 2021, `lottery.straight_through`): dense
          weights behind the N:M mask of their magnitudes, recomputed every
          step, gradients passed straight through to the pruned weights,
          which decay by `sparse.sr_ste_decay`; starts from the N:M mask of
          the initial weights' magnitudes. Density and distribution as 'nm';
          `update_every` is not read. Not among the default methods.

The masks change inside the compiled train step (`lottery.sparse_updates`
builds the hooks; `Experiment.with_mask_update` compiles one loop per group
of replicates, never again per update). Per-layer densities come from
`lottery.distributions` ('uniform' or 'erk') over the prunable leaves of
`pruning.prunable`: to keep a layer dense (the RigL paper keeps ResNet-50's
first conv dense), leave it out of those patterns.

Replicate i starts from `exp.replicate_init(i)`, trains on data seed
`seeds.data + i`, and draws its random starting mask from
`rng.stream(seeds.control + i, 'mask_init')`: static, SET and RigL start from
the same mask at equal density and distribution. SET's random regrowth draws
from the train step's key (data seed, step), so a resumed run draws what an
uninterrupted one would.

Every run's record: its coordinates (method, distribution, target_density,
seed), density, layer_densities, test_accuracy, test_loss, train_loss,
time_s, mask_updates (the updates that change the mask's counts or draw
new positions; for sr_ste the steps, at each of which the mask is
recomputed, whether or not it moves), mask_change (fraction
of the final mask's kept weights that the initial mask did not keep) and
ticket. The ticket holds the final mask, the initial and trained weights, and
the initial mask (`Ticket.initial_mask`); each evaluation in its history also
has 'mask_change' and 'mask_density', computed on the device.

Groups (each trains `seeds.num` replicates at once), in run order: dense,
then distribution, density, method; see `lottery.driver`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

from lottery import analysis
from lottery import config as config_lib
from lottery import distributions
from lottery import driver
from lottery import loop as loop_lib
from lottery import method as method_lib
from lottery import parallel
from lottery import pruning
from lottery import rng
from lottery import scores as scores_lib
from lottery import sparse_updates
from lottery import straight_through
from lottery import structure
from lottery import tickets
from lottery.errors import LotteryError
from lottery.experiment import Experiment

__all__ = ["METHODS", "Sparse", "check", "groups", "run", "summary"]

# Sparse training's methods (lottery.sparse_updates).
METHODS = ("static", "set", "rigl", "gmp")
DENSE = "dense"


# The `sparse` block of the config schema (`lottery.config`).
def _sparse_methods(f, v, c) -> None:
  config_lib.names_tuple(f, v, sparse_updates.names(), ("rigl", "set"))


def _sparse_distribution(f, v, c) -> None:
  config_lib.names_tuple(f, v, distributions.names(), None)


def _sparse_densities(f, v, c) -> None:
  if not isinstance(v, (tuple, list)) or not v:
    config_lib.fail(f, v, "must be a non-empty tuple of densities in (0, 1), e.g. "
                    "(0.1, 0.03)")
  for x in v:
    config_lib.check_real(f, x, 0, 1, lo_open=True, hi_open=True)
  if len(set(v)) != len(v):
    config_lib.fail(f, v, "must not repeat a density")


config_lib.read_when(
    "sparse.n_m", lambda c: _with_n_m(c["sparse.methods"]))


def _sparse_n_m(f, v, c) -> None:
  spec = structure.parse_n_m(v, field=f)
  methods = [m for m in c["sparse.methods"] if m in _N_M_METHODS]
  if not methods:  # Nothing reads it (its `read_when` above).
    if v != N_M:
      config_lib.fail(f, v, f"is read by methods {list(_N_M_METHODS)}, which "
                      f"sparse.methods does not name")
    return
  d = spec.n / spec.m
  if any(x != d for x in c["sparse.densities"]):
    config_lib.fail("sparse.densities", tuple(c["sparse.densities"]),
                    f"{methods[0]!r} with sparse.n_m={v!r} trains at density N/M = "
                    f"{d!r}: set sparse.densities to ({d!r},)")
  dist = c["sparse.distribution"]
  if ((dist,) if isinstance(dist, str) else tuple(dist)) != ("uniform",):
    config_lib.fail("sparse.distribution", dist, f"{methods[0]!r} keeps {spec.n} of "
                    f"every {spec.m} in every layer: set it to 'uniform'")


def _sparse_decay(f, v, c) -> None:
  config_lib.check_real(f, v, 0, 1, lo_open=False, hi_open=True)


# The methods that train under `sparse.n_m`, and its default.
_N_M_METHODS = ("nm", "sr_ste")
N_M = "2:4"


def _with_n_m(methods) -> bool:
  """Whether a run of `methods` reads `sparse.n_m` (an N:M method runs)."""
  return any(m in _N_M_METHODS for m in methods)


def _sparse_end_fraction(f, v, c) -> None:
  config_lib.check_real(f, v, 0, 1, lo_open=True, hi_open=False)


def _sparse_end_step(f, v, c) -> None:
  config_lib.check_int(f, v, 0)
  begin = c["sparse.begin_step"]
  if v and v <= begin:
    config_lib.fail(f, v, f"must be 0 (end_fraction x training.steps) or above "
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
    config_lib.fail(f, v, f"must be a multiple of sparse.update_every={every}, where "
                    f"GMP's mask updates happen (e.g. "
                    f"{' or '.join(map(str, near))})")


# Sparse training (lottery.sparse, python -m experiments.sparse): every
# method x distribution x density x replicate, and a dense baseline. The
# sparse leaves are those of pruning.prunable.
config_lib.register_block(
    "sparse",
    dict(
        methods=METHODS,  # static | set | rigl | gmp | nm | sr_ste
        densities=(0.1, 0.03),  # Target densities, each in (0, 1).
        # Per-layer densities: uniform | erk; a tuple runs each.
        distribution=("uniform", "erk"),
        update_every=100,  # Steps between mask updates (set, rigl, gmp, nm).
        # set / rigl / nm: fraction of each layer's active weights dropped and
        # regrown, cosine-annealed to 0 at end_fraction x training.steps.
        drop_fraction=0.3,
        end_fraction=0.75,
        # gmp: from dense to the target between these steps (cubic schedule);
        # end_step 0 = end_fraction x training.steps.
        begin_step=0,
        end_step=0,
        # nm, sr_ste: keep N of every M along each prunable leaf's reduction
        # axis.
        n_m=N_M,
        # sr_ste: lambda_W, the decay of the pruned weights' dense values
        # (Zhou et al. 2021: 2e-4).
        sr_ste_decay=2e-4,
    ),
    rules={
        "sparse.methods": _sparse_methods,
        "sparse.densities": _sparse_densities,
        "sparse.distribution": _sparse_distribution,
        "sparse.update_every": config_lib.count(1),
        "sparse.drop_fraction": config_lib.fraction,
        "sparse.end_fraction": _sparse_end_fraction,
        "sparse.begin_step": config_lib.count(0),
        "sparse.end_step": _sparse_end_step,
        "sparse.n_m": _sparse_n_m,
        "sparse.sr_ste_decay": _sparse_decay,
    },
    help={
        "sparse.methods": "sparse-training methods; a dense baseline always runs",
        "sparse.densities": "target densities, each in (0, 1)",
        "sparse.distribution": "per-layer densities (a tuple runs each)",
        "sparse.update_every": "steps between mask updates (set, rigl, gmp, nm)",
        "sparse.drop_fraction": "set/rigl/nm: fraction of active weights dropped and regrown, cosine-annealed",
        "sparse.end_fraction": "set/rigl/nm: updates stop at end_fraction x training.steps (gmp's default end)",
        "sparse.begin_step": "gmp: the step pruning starts",
        "sparse.end_step": "gmp: the step it reaches the target (0 = end_fraction x training.steps)",
        "sparse.n_m": "nm, sr_ste: the N:M pattern along the reduction axis, e.g. '2:4' (density N/M)",
        "sparse.sr_ste_decay": "sr_ste: lambda_W, decay of the pruned weights' dense values",
    })


def _distributions(config) -> tuple[str, ...]:
  d = config.sparse.distribution
  return (d,) if isinstance(d, str) else tuple(d)


def gmp_end(config) -> int:
  """The step GMP reaches its target: `sparse.end_step`, or end_fraction x
  training.steps when it is 0."""
  s = config.sparse
  return s.end_step or int(s.end_fraction * config.training.steps)


def check(config: ml_collections.ConfigDict) -> None:
  """Validates `config` for sparse training (every field, then the bounds
  that depend on training.steps).

  Raises:
    LotteryError: naming the field and value.
  """
  config_lib.validate(config)
  s, steps = config.sparse, config.training.steps
  dynamic = [m for m in s.methods if m in sparse_updates.names(dynamic=True)
             and not sparse_updates.info(m).get("every_step")]
  if dynamic and not sparse_updates.num_updates(steps, s.update_every):
    # Updates follow their step's optimizer update: none at the last step.
    raise LotteryError(
        f"sparse.update_every: no mask update happens in training.steps="
        f"{steps} for {dynamic} (got {s.update_every})")
  if "gmp" not in s.methods:
    return
  end = gmp_end(config)
  if s.begin_step >= end:
    raise LotteryError(f"sparse.begin_step: must be below GMP's end step "
                       f"{end} (got {s.begin_step})")
  last = sparse_updates.num_updates(steps, s.update_every) * s.update_every
  if end > last:
    raise LotteryError(
        f"sparse.end_step: GMP must reach its target at an update step "
        f"(multiple of sparse.update_every={s.update_every}) below "
        f"training.steps={steps}, the last being {last} (got {end}"
        f"{'' if s.end_step else ' from end_fraction'})")


@dataclasses.dataclass(frozen=True)
class Group:
  """One method x distribution x density: its replicates share a loop."""
  method: str
  distribution: str
  density: float

  @property
  def path(self) -> str:
    if self.method == DENSE:
      return DENSE
    return f"{self.method}/{self.distribution}/density_{self.density!r}"


def groups(config: ml_collections.ConfigDict) -> list[Group]:
  """The run's groups, in run order: dense, then distribution x density x
  method."""
  out = [Group(DENSE, "none", 1.0)]
  for dist in _distributions(config):
    for d in config.sparse.densities:
      for m in config.sparse.methods:
        out.append(Group(m, dist, d))
  return out


def _random_mask(dense_mask, counts: dict[str, int], key: jax.Array):
  """A mask keeping `counts[path]` weights of each leaf at random."""
  return pruning.keep_top(dense_mask, scores_lib.random(dense_mask, key),
                          counts)


class _TrackedLoop:
  """The experiment's loop, whose evaluations add 'mask_change' and
  'mask_density' (`sparse_updates.mask_stats`, on the device) against the
  initial mask of each replicate being trained (found by its data key); for
  a stacked state of replicates, lists over them, as the loop's metrics."""

  def __init__(self, loop, initial: dict[bytes, Any]):
    self._loop = loop
    self._initial = initial

  def __getattr__(self, name):  # form, mesh, run, ...: the loop's own.
    return getattr(self._loop, name)

  def evaluate(self, state, data) -> dict:
    return {**self._loop.evaluate(state, data), **self._stats(state)}

  def run_and_evaluate(self, state, data, idx, lrs, batches=None):
    state, losses, metrics = self._loop.run_and_evaluate(state, data, idx, lrs,
                                                         batches)
    return state, losses, {**metrics, **self._stats(state)}

  def _stats(self, state) -> dict:
    """The mask statistics of `state` against its initial mask(s)."""
    keys = np.asarray(parallel.to_host(state.rng))
    if not loop_lib.is_stacked(state):
      ref = self._initial.get(keys.tobytes())
      if ref is None:
        return {}
      stats = sparse_updates.mask_stats(state.mask, ref)
      return {k: float(parallel.to_host(v)) for k, v in stats.items()}
    refs = [self._initial.get(row.tobytes()) for row in keys]
    if not all(r is not None for r in refs):
      return {}
    stacked = jax.tree.map(lambda *xs: np.stack(xs), *refs)
    stats = jax.vmap(sparse_updates.mask_stats)(state.mask, stacked)
    return {k: np.asarray(parallel.to_host(v)).tolist()
            for k, v in stats.items()}


def _data_key(seed: int) -> bytes:
  """The bytes of `TrainState.rng` of a job with data seed `seed`."""
  return np.asarray(jax.random.key_data(jax.random.key(seed))).tobytes()


def _hook(exp: Experiment, g: Group, counts: dict[str, int]):
  """(hook, update_every, number of updates that change the mask) of a
  group; (None, 0, 0) for dense and static."""
  c = exp.config
  s = c.sparse
  if g.method == DENSE:
    return None, 0, 0
  hook, changes = sparse_updates.get(g.method)(
      exp.dense_mask, counts, steps=c.training.steps,
      update_every=s.update_every, drop_fraction=s.drop_fraction,
      end_fraction=s.end_fraction, begin_step=s.begin_step,
      end_step=gmp_end(c), n_m=s.n_m, sr_ste_decay=s.sr_ste_decay)
  if hook is None:
    return None, 0, 0
  return hook, s.update_every, changes


def summary(workdir) -> dict:
  """The run's summary.json ({'runs': [...], 'finished': bool})."""
  return tickets.summary(workdir)


def run(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
        progress=None, log: Callable[[str], None] | None = None,
        log_steps: bool = False) -> dict:
  """Runs (or resumes) a sparse-training experiment; returns its summary.

  Args:
    config: e.g. configs/sparse_mnist1d.py's (`method = 'sparse'`);
      `config.sparse` picks the methods, densities and distributions.
    workdir: where everything is written; a workdir of an unfinished run
      of the same config is resumed, one of another config is refused.
    progress: a `lottery.progress.Progress`; default: none shown.
    log: receives the per-group lines when no `progress` is given.
    log_steps: also log the test metrics of every evaluation.

  Returns:
    {'runs': [record, ...], 'finished': True}, also written to
    <workdir>/summary.json; one record per replicate (see the module doc).

  Raises:
    LotteryError: on bad input, before anything is written.
  """
  return driver.run(config, workdir, method="sparse", progress=progress,
                    log=log, log_steps=log_steps)


@method_lib.register
class Sparse(method_lib.Method):
  """Sparse training as a method plug-in (see the module doc).

  Coordinates: {'method': 'dense' | a sparse method, 'distribution':
  'none' | a distribution, 'target_density': d}.
  """

  name = "sparse"
  fields = ("pruning.prunable", "sparse")
  notebook = "sparse_training.ipynb"

  def check(self, config: ml_collections.ConfigDict) -> None:
    check(config)

  def before_claim(self, ctx: method_lib.Context) -> None:
    shapes = distributions.shapes_of(ctx.exp.dense_mask)
    if _with_n_m(ctx.config.sparse.methods):
      # M divides every reduction axis.
      structure.check_model(ctx.config.sparse.n_m, ctx.exp.dense_mask,
                            ctx.exp.model, ctx.config.model.name,
                            field="sparse.n_m")
    for g in groups(ctx.config):
      if g.method != DENSE:
        distributions.check_every_layer_kept(
            "sparse.densities", g.density,
            distributions.keep_counts(g.distribution, ctx.exp.dense_mask,
                                      g.density), shapes,
            f"distribution {g.distribution!r}")

  def grid(self, ctx: method_lib.Context) -> list[dict]:
    return [{"method": g.method, "distribution": g.distribution,
             "target_density": g.density} for g in groups(ctx.config)]

  def directory(self, coords: dict) -> str:
    return f"runs/{_group(coords).path}"

  def _hook(self, ctx, coords: dict):
    """(group, counts, hook, update_every, updates) of a group, once."""
    key = ("hook", method_lib.group_key(coords))
    if key not in ctx.state:
      g = _group(coords)
      counts = (distributions.keep_counts(g.distribution,
                                          ctx.exp.dense_mask, g.density)
                if g.method != DENSE else None)
      ctx.state[key] = (g, counts, *_hook(ctx.exp, g, counts))
    return ctx.state[key]

  def start(self, ctx: method_lib.Context,
            coords: dict) -> method_lib.GroupStart:
    c, exp = ctx.config, ctx.exp
    g, counts, hook, every, _ = self._hook(ctx, coords)
    st = hook if isinstance(hook, straight_through.StraightThrough) else None
    if st is not None:
      gexp = exp.with_straight_through(st)
    elif hook is not None:
      gexp = exp.with_mask_update(hook, every)
    else:
      gexp = exp
    initial, starts = {}, []
    # SR-STE starts from the N:M mask of the initial weights (one program).
    mask_of = jax.jit(st.mask) if st is not None else None
    for i in range(ctx.replicates):
      if st is not None:
        mask = jax.device_get(mask_of(ctx.init(i)[0]))
      elif g.method in (DENSE, "gmp"):
        mask = exp.dense_mask
      elif g.method == "nm" or (g.method == "static" and
                                _with_n_m(c.sparse.methods)):
        mask = pruning.prune(exp.dense_mask, scores_lib.random(
            exp.dense_mask, rng.stream(c.seeds.control + i, "mask_init")),
                             0.0, structure=c.sparse.n_m)
      else:
        mask = _random_mask(exp.dense_mask, counts,
                            rng.stream(c.seeds.control + i, "mask_init"))
      initial[_data_key(c.seeds.data + i)] = mask
      starts.append(method_lib.Start(mask, *ctx.init(i)))
    gexp = dataclasses.replace(gexp, loop=_TrackedLoop(gexp.loop, initial))
    return method_lib.GroupStart(starts, exp=gexp, initial_masks=True)

  def record(self, ctx, done: method_lib.Done) -> list[dict]:
    updates = self._hook(ctx, done.coords)[-1]
    keep = ("density", "layer_densities", "test_accuracy", "test_loss",
            "train_loss", "time_s")
    return [{**t.coords, **{k: t.metrics[k] for k in keep},
             "mask_updates": updates,
             "mask_change": 1.0 - analysis.overlap(t.mask, t.initial_mask),
             "ticket": p} for t, p in zip(done.tickets, done.paths)]

  def report(self, ctx, done: method_lib.Done) -> method_lib.Report:
    recs = done.records
    acc = np.asarray([r["test_accuracy"] for r in recs])
    change = np.mean([r["mask_change"] for r in recs])
    return method_lib.Report(
        f"{done.coords['method']:6s} {done.coords['distribution']:7s} "
        f"density {np.mean([r['density'] for r in recs]):.4f}  test acc "
        f"{acc.mean():.4f}" +
        (f" ± {acc.std():.4f} ({len(recs)} seeds)" if len(recs) > 1 else "") +
        f"  mask change {change:.3f}  ({done.time_s:.1f} s)")


def _group(coords: dict) -> Group:
  return Group(coords["method"], coords["distribution"],
               coords["target_density"])

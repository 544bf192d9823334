"""What a config builds once and every job of every method reuses.

`build(config)` validates the config, loads the data, builds the model, the
optimizer, the compiled loop and the initial weights, and resolves every
config string (names, patterns, layer fractions) once, so the methods' drivers
(IMP, pruning at init, sparse training) work with objects, not strings.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from lottery import checkpoint
from lottery import config as config_lib
from lottery import data as data_lib
from lottery import loop as loop_lib
from lottery import masks as masks_lib
from lottery import models
from lottery import optim
from lottery import parallel
from lottery import pruning
from lottery import rng
from lottery import step as step_lib
from lottery import workdir as workdir_lib
from lottery.errors import LotteryError


@dataclasses.dataclass
class Experiment:
  """The built pieces of one config.

  Attributes:
    config: the validated config.
    dataset: the host arrays.
    data: the arrays placed for training, or the record files streamed
      (`loop.Data`).
    model: the Flax module; `apply_fn` its `step.ApplyFn`.
    tx: the optimizer (`keep_pruned`, rate as an argument).
    schedule: the learning-rate schedule (an optax schedule).
    loop: the compiled train loop and evaluation.
    init_params, init_model_state: the weights and model state of
      `seeds.init`.
    dense_mask: the all-kept mask over the prunable parameters.
    layer_fractions: `pruning.layer_fractions`, parsed.
  """
  config: ml_collections.ConfigDict
  dataset: data_lib.Dataset
  data: loop_lib.Data
  model: nn.Module
  apply_fn: step_lib.ApplyFn
  tx: Any
  schedule: Callable
  loop: loop_lib.Loop
  init_params: Any
  init_model_state: Any
  dense_mask: Any
  layer_fractions: dict[str, float]
  _init: Callable = dataclasses.field(repr=False, default=None)
  _augment: Callable | None = dataclasses.field(repr=False, default=None)

  def init(self, key: jax.Array) -> tuple[Any, Any]:
    """Fresh (params, model_state) for this model from `key`."""
    variables = self._init(key)
    params = variables.pop("params")
    return params, variables

  def replicate_init(self, i: int) -> tuple[Any, Any]:
    """(params, model_state) of replicate i: seed `seeds.init + i`."""
    if i == 0:
      return self.init_params, self.init_model_state
    return self.init(rng.key(self.config.seeds.init + i))

  def with_mask_update(self, mask_update: step_lib.MaskUpdate,
                       update_every: int) -> Experiment:
    """A copy whose loop runs `mask_update` every `update_every` steps.

    Same data, model, optimizer and weights (nothing is reloaded); only the
    train step and its compiled loop are new (see `build`).
    """
    return self._with_step(self.tx, mask_update=mask_update,
                           update_every=update_every)

  def with_straight_through(self, st) -> Experiment:
    """A copy that trains by SR-STE (`lottery.straight_through`): its
    optimizer is `st.optimizer(tx)`, holding the dense weights, and its
    train step recomputes the N:M mask from them every step. Start its
    jobs from unmasked weights W0 with the mask `st.mask(W0)`."""
    tx = st.optimizer(self.tx)
    return dataclasses.replace(self._with_step(tx, straight_through=st),
                               tx=tx)

  def _with_step(self, tx, **step_options) -> Experiment:
    step_fn = step_lib.make_train_step(
        self.apply_fn, tx,
        loss_fn=step_lib.train_loss(self.config.training.label_smoothing),
        augment=self._augment, **step_options)
    loop = loop_lib.Loop(step_fn, step_lib.make_eval_step(self.apply_fn),
                         form=self.loop.form, mesh=self.loop.mesh,
                         replicas=self.loop.replicas)
    return dataclasses.replace(self, loop=loop)

  def learning_rates(self, start: int, stop: int):
    """The schedule's rates for steps start..stop-1."""
    return optim.learning_rates(self.schedule, start, stop)


# The config's model options (`model.<option>`), passed to the model's
# factory where set.
MODEL_OPTIONS = ("depth", "width", "dim", "heads", "mlp_dim", "patch",
                 "bn_init")


def model_options(config) -> dict[str, int | str]:
  """The model options set in the config (0 or '' = the model's
  default)."""
  return {k: config.model[k] for k in MODEL_OPTIONS
          if k in config.model and config.model[k]}


def _reads_arrays(config: ml_collections.ConfigDict) -> bool:
  """Whether a run reads the dataset's arrays beside its train loop: PaI's
  scoring batch, the stability analysis's statistics, IMP's error barriers
  (its 'stability_copy' control, `lottery.imp.COPY`, and
  pruning.level_barrier evaluate paths on the training and test sets)."""
  if config.method not in config_lib.LOOP_ONLY_METHODS:
    return True
  return config.method == "imp" and (
      "stability_copy" in config.get("controls", ()) or
      bool(config.pruning.get("level_barrier", False)))


def build(config: ml_collections.ConfigDict, *,
          mask_update: step_lib.MaskUpdate | None = None,
          update_every: int = 0, replicates: int | None = None,
          data_contents: str | None = None) -> Experiment:
  """Validates `config`, loads the data and builds model, optimizer, loop.

  Args:
    config: a config from `lottery.base_config()` or configs/, or a run's
      (`lottery.load_config(workdir)`: the fields it lacks take their
      defaults, `config.complete`).
    mask_update, update_every: an optional mask-update hook compiled into
      the train step (sparse training; see `step.make_train_step`).
    replicates: the replicates the mesh's replicate axis is sized for
      (`parallel.make_mesh`; default seeds.num; a method's `Method.stacked`).
    data_contents: `data.contents(config.data)`, where the caller has it
      (the streamed cache is kept under it).
  """
  config = config_lib.complete(config)
  config_lib.validate(config)
  records = None
  # Whether `ds` holds the whole dataset, or one example of each split.
  whole = True
  if config.data.crop != "none":
    # Images decoded and cropped on the host as they are streamed: the
    # dataset's arrays hold one example of each split (see images.open_splits).
    from lottery import images  # pylint: disable=g-import-not-at-top
    ds, records = images.open_splits(config.data)
    whole = False
  elif config.data.source == "stream":
    # The record files of the whole set (written on first use), opened and
    # checked before anything is trained or written; the set itself is
    # loaded only to write them or for a method that reads its arrays.
    from lottery import stream  # pylint: disable=g-import-not-at-top
    fingerprint = data_contents or data_lib.contents(config.data)
    if not _reads_arrays(config):
      records = stream.open_written(config.data, fingerprint)
    if records is not None:
      ds = stream.sample(records["train"].name, records,
                         records["train"].num_classes)
      whole = False
    else:
      ds = data_lib.load(config.data)
      records = stream.open_cache(config.data, ds, fingerprint)
  else:
    ds = data_lib.load(config.data)
  num_train = len(ds.y_train) if records is None else len(records["train"])
  x_val = y_val = None
  if config.data.validation_size:
    if records is not None:
      keep, val = data_lib.validation_rows(num_train,
                                           config.data.validation_size)
      records["train"], records["val"] = (records["train"].subset(keep),
                                          records["train"].subset(val))
      num_train = len(keep)
    if whole:
      ds, x_val, y_val = data_lib.split_validation(
          ds, config.data.validation_size)
      if records is None:
        num_train = len(ds.y_train)
  t = config.training
  if t.batch_size > num_train:
    raise LotteryError(f"training.batch_size: {t.batch_size} exceeds the "
                       f"{num_train} training examples")
  model = models.get(config.model.name, ds.num_classes,
                     **model_options(config))
  # Compiled once: run op by op, the initializers cost more than training.
  # A flat key: the same weights, compiled in a fraction of the time.
  init = jax.jit(lambda key: model.init(rng.flat(key), ds.x_train[:1]))
  # Traced once: the call below reuses the trace.
  _check_fits(config.model.name, init.eval_shape(rng.key(config.seeds.init)))
  variables = dict(init(rng.key(config.seeds.init)))
  init_params = variables.pop("params")
  dense_mask = masks_lib.make_mask(init_params, config.pruning.prunable)
  prunable = masks_lib.prunable_names(dense_mask)
  layer_fractions = pruning.parse_layer_fractions(
      config.pruning.layer_fractions)
  for pattern in layer_fractions:
    rx = masks_lib.compile_patterns([pattern], "pruning.layer_fractions")[0]
    if not any(rx.fullmatch(n) for n in prunable):
      raise LotteryError(f"pruning.layer_fractions: {pattern!r} matches no "
                         f"prunable parameter (prunable: {prunable})")
  augment = None
  if config.data.augment != "none":
    from lottery import augment as augment_lib  # pylint: disable=g-import-not-at-top
    augment = augment_lib.get(config.data.augment)
    # Traced on one example's shape: one that the data's cannot take is
    # refused now, before anything is written.
    jax.eval_shape(augment, rng.key(0), jax.ShapeDtypeStruct(
        (1, *ds.x_train.shape[1:]), np.float32))
  decayed = optim.decay_mask(t.weight_decay_on) if t.weight_decay else None
  if decayed is not None:
    decayed(init_params)  # A pattern that matches no parameter is refused.
  apply_fn = step_lib.flax_apply(model)
  tx = optim.make_optimizer(t)
  step_fn = step_lib.make_train_step(apply_fn, tx,
                                     loss_fn=step_lib.train_loss(
                                         t.label_smoothing),
                                     augment=augment,
                                     mask_update=mask_update,
                                     update_every=update_every)
  mesh = make_mesh(config, replicates)
  loop = loop_lib.Loop(step_fn, step_lib.make_eval_step(apply_fn),
                       form=loop_lib.choose_form(t.loop, init_params),
                       mesh=mesh, replicas=t.replicas)
  if records is not None:
    data = loop_lib.stream_data(records["train"], records["test"],
                                records.get("val"))
  else:
    on_device = config.data.on_device and _fits_on_device(
        ds.x_train.nbytes + ds.y_train.nbytes)
    data = loop_lib.put_data(ds.x_train, ds.y_train, ds.x_test, ds.y_test,
                             x_val=x_val, y_val=y_val, on_device=on_device,
                             mesh=mesh)
  return Experiment(
      config=config, dataset=ds, data=data,
      model=model, apply_fn=apply_fn, tx=tx,
      schedule=optim.make_schedule(t), loop=loop, init_params=init_params,
      init_model_state=variables, dense_mask=dense_mask,
      layer_fractions=layer_fractions, _init=init, _augment=augment)


@contextlib.contextmanager
def prepared(config: ml_collections.ConfigDict, workdir, progress, *,
             check: Callable[[ml_collections.ConfigDict], None] = (
                 config_lib.validate),
             before_claim: Callable[[Experiment, bool], None] | None = None,
             facts: dict | None = None,
             saved: ml_collections.ConfigDict | None = None,
             replicates: int | None = None,
             ) -> Iterator[tuple[Experiment, pathlib.Path]]:
  """Every driver's start: `with prepared(config, workdir, progress) as
  (exp, wd):` runs the method on the built experiment in the claimed workdir.

  In order, so that bad input is refused before the long work and nothing is
  written before it all succeeded: `check(config)` (default
  `config.validate`), the data's fingerprint, `workdir.check` (a workdir of
  another config or other data is refused untouched), `build`,
  `before_claim(exp, holds)` (a method's own checks of the built
  experiment; `holds`: whether the workdir holds this run already), the
  start-up lines, then `workdir.claim` (the lock and config.json), held
  until the block ends, with the checkpoint writes on a writer thread
  (`checkpoint.background_writes`). `facts` (e.g. {'method': 'imp'}) are
  recorded in facts.json beside the data's fingerprint; a workdir whose
  facts differ is refused. `saved` (default `config`) is what config.json
  holds and a rerun is compared with (the fields the method reads).
  """
  saved = config if saved is None else saved
  t0 = time.time()
  # Several processes agree that they all start the same run before
  # process 0 claims the workdir, and wait for its claim before any trains;
  # one that stops on the way tells the others
  # (`parallel.announce_failure`), which would otherwise wait for it.
  with contextlib.ExitStack() as stack:
    try:
      exp, facts, holds = checked(config, workdir, check=check,
                                  before_claim=before_claim, facts=facts,
                                  saved=saved, replicates=replicates)
      parallel.start_together(json.dumps(
          [workdir_lib.config_json(saved), os.path.abspath(workdir), holds,
           facts], sort_keys=True))
      start_lines(exp, progress, time.time() - t0)
      if not holds and os.path.exists(os.path.join(workdir,
                                                    workdir_lib.CONFIG_FILE)):
        progress.info(f"note: {os.fspath(workdir)} held a run of another "
                      f"config that saved no result; this run replaces it")
      # Tickets are written while the next job trains; all is on disk
      # before the lock is released.
      held = stack.enter_context(workdir_lib.claim(workdir, saved,
                                                   extra=facts))
      stack.enter_context(checkpoint.background_writes())
      parallel.barrier("workdir claimed")
    except Exception as e:  # pylint: disable=broad-except
      parallel.announce_failure(str(e) or type(e).__name__)
      raise
    yield exp, held.path


def checked(config: ml_collections.ConfigDict, workdir, *,
            check: Callable[[ml_collections.ConfigDict], None] = (
                config_lib.validate),
            before_claim: Callable[[Experiment, bool], None] | None = None,
            facts: dict | None = None,
            saved: ml_collections.ConfigDict | None = None,
            replicates: int | None = None) -> tuple[Experiment, dict, bool]:
  """`prepared`'s checks, writing nothing (`--dry_run` runs them too):
  `check(config)`, the data's fingerprint and contents' digest,
  `workdir.check` (skipped for a workdir of None), `build`,
  `before_claim(exp, holds)`.

  Returns:
    (the built experiment, the facts with the data's fingerprint, whether
    the workdir holds this run already).
  """
  saved = config if saved is None else saved
  check(config)
  fingerprint = data_lib.fingerprint(config.data)
  contents = data_lib.contents(config.data, known=fingerprint)
  facts = {**(facts or {}), "data_fingerprint": fingerprint,
           # Where the fingerprint reads no data (TFDS, image folders).
           **({"data_contents": contents} if contents != fingerprint else {})}
  holds = bool(workdir) and workdir_lib.check(workdir, saved, extra=facts)
  exp = build(config, replicates=replicates, data_contents=contents)
  if before_claim is not None:
    before_claim(exp, holds)
  return exp, facts, holds


def make_mesh(config: ml_collections.ConfigDict,
              replicates: int | None = None):
  """The mesh `build` lays the run out on (`parallel.make_mesh`: None on
  one device), after checking that training.replicas can run on it; without
  building anything, so that --dry_run checks the devices too.

  Raises:
    LotteryError: naming training.batch_size or training.replicas.
  """
  t = config.training
  mesh = parallel.make_mesh(
      config.seeds.num if replicates is None else replicates, t.batch_size)
  loop_lib.replica_form(t.replicas, mesh)
  return mesh


def start_lines(exp: Experiment, progress, build_s: float) -> None:
  """The start-up lines of every driver: data, model, devices, loop,
  replicates and mesh (`progress.info`)."""
  ds, c = exp.dataset, exp.config
  streamed = ("" if exp.data.stream is None else
              f", streamed from {exp.data.stream.path.parent}")
  n_params = sum(int(np.size(x)) for x in jax.tree.leaves(exp.init_params))
  prunable = sum(total for _, total in masks_lib.counts(exp.dense_mask).values())
  n_test = len(ds.y_test) if exp.data.stream is None else len(exp.data.test)
  crop = (f", {c.data.crop} crops" if c.data.crop != "none" else "")
  progress.info(f"data: {c.data.name} ({exp.data.num_train} train, "
                f"{n_test} test, {ds.num_classes} classes, input "
                f"{tuple(ds.x_train.shape[1:])}"
                f"{', augment ' + c.data.augment if c.data.augment != 'none' else ''}"
                f"{crop}{streamed})")
  progress.info(f"model: {c.model.name} ({n_params:,} parameters, "
                f"{prunable:,} prunable)")
  devices = jax.devices()
  progress.info(f"devices: {len(devices)} x {devices[0].device_kind} "
                f"({jax.default_backend()}); loop: {exp.loop.form}; built in "
                f"{build_s:.1f} s")
  if c.seeds.num > 1:
    progress.info(f"replicates: {c.seeds.num} (seeds init {c.seeds.init}.., "
                  f"data {c.seeds.data}.., control {c.seeds.control}..), one "
                  f"compiled program ({_REPLICAS[exp.loop.replicas]})")
  if exp.loop.mesh is not None:
      progress.info(f"mesh: {parallel.describe(exp.loop.mesh)}")


# The start-up line's words for each replica form (loop.replica_form).
_REPLICAS = {"unroll": "the step once per replicate: each its single run",
             "vmap": "the step vmapped"}


def _device_limit() -> int | None:
  """The first device's memory as it reports it (None: the CPU's, none)."""
  stats = jax.local_devices()[0].memory_stats() or {}
  limit = stats.get("bytes_limit")
  return None if limit is None else int(limit)


def _memory_bytes() -> int | None:
  """The first device's memory; the CPU's: the machine's, or its cgroup's
  limit where lower (a container); None where neither is known."""
  limit = _device_limit()
  if limit is not None or jax.default_backend() != "cpu":
    return limit
  found = []
  try:
    found.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
  except (ValueError, OSError, AttributeError):
    pass
  for path in ("/sys/fs/cgroup/memory.max",  # cgroup v2, then v1.
               "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
    try:
      text = pathlib.Path(path).read_text().strip()
    except OSError:
      continue
    if text.isdigit():
      found.append(int(text))
  return min(found, default=None)


def _check_fits(name: str, variables: Any) -> None:
  """Refuses, before anything is written, a model whose training cannot fit
  in the device's memory: its weights and their gradients (two copies of
  its parameters at the least; the optimizer's state and the rewind weights
  add more).

  Raises:
    LotteryError: ('model: ...') naming the parameter count and the memory.
  """
  leaves = jax.tree.leaves(variables)
  nbytes = sum(x.size * x.dtype.itemsize for x in leaves)
  limit = _memory_bytes()
  if limit is not None and 2 * nbytes > limit:
    count = sum(x.size for x in leaves)
    where = ("this machine" if jax.default_backend() == "cpu" else
             jax.local_devices()[0].device_kind)
    raise LotteryError(
        f"model: {name} has {count:,} parameters ({nbytes / 2**30:.1f} GiB); "
        f"training needs at least twice that (weights and gradients), more "
        f"than the {limit / 2**30:.1f} GiB of memory of {where}: choose a "
        f"smaller model")


def _fits_on_device(nbytes: int) -> bool:
  """Whether a training set of `nbytes` fits in half the device's memory.

  Devices that report no limit (the CPU) always fit.
  """
  limit = _device_limit()
  return limit is None or nbytes <= limit // 2

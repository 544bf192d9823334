"""Iterative magnitude pruning with rewinding, and its controls.

Round 0 trains the dense network. Each later round scores the previous round's
trained weights, prunes `pruning.fraction` of the surviving prunable weights,
resets the rest and trains again:

  rewind     weights back to step k = `pruning.rewind_step` of round 0
             (k = 0: initialization, Frankle & Carbin 2019; k > 0: Frankle et
             al. 2020), then steps k..T of the schedule;
  lr_rewind  keep the trained weights, replay the whole schedule (Renda et al.
             2020);
  finetune   keep the trained weights, train T steps at the final rate.

Beside each pruned round's ticket the controls in `config.controls` run from
the same config: 'reinit' (same mask, fresh weights drawn with the control
seed) and 'random_prune' (the ticket's per-layer densities at random positions,
the ticket's starting weights). Both train exactly like the ticket.

Resume order: a run is a sequence of jobs (round 0 ticket, round 1 ticket,
round 1 reinit, round 1 random_prune, round 2 ticket, ...). A finished job is
on disk (`lottery.tickets`) and is loaded, not re-run; the job in flight
resumes from its last mid-run checkpoint in <workdir>/progress. Every input of
a job is a pure function of the config and earlier jobs' saved arrays, and the
batch order of step s depends only on (data seed, s), so a resumed run ends
bit-for-bit equal to an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import os
import time
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
from lottery import masks as masks_lib
from lottery import models
from lottery import optim
from lottery import pruning
from lottery import scores as scores_lib
from lottery import tickets
from lottery import train as train_lib
from lottery import workdir as workdir_lib
from lottery.errors import LotteryError

# fold_in tags of the control seed: one stream per use, never reused.
_REINIT, _RANDOM_PRUNE, _RANDOM_SCORE = 0, 1, 2


@dataclasses.dataclass
class Experiment:
  """What one config builds once and every round reuses."""
  config: ml_collections.ConfigDict
  dataset: data_lib.Dataset
  data: train_lib.Data
  model: nn.Module
  trainer: train_lib.Trainer
  schedule: Callable
  init_params: Any
  dense_mask: Any

  def init(self, key: jax.Array) -> Any:
    """Fresh weights for this model."""
    return self.model.init(key, self.dataset.x_train[:1])["params"]


def build(config: ml_collections.ConfigDict) -> Experiment:
  """Validates `config`, loads the data and builds model and trainer."""
  config_lib.validate(config)
  ds = data_lib.load(config.data)
  x_val = y_val = None
  if config.data.validation_size:
    ds, x_val, y_val = data_lib.split_validation(ds,
                                                 config.data.validation_size)
  t = config.training
  if t.batch_size > len(ds.y_train):
    raise LotteryError(f"training.batch_size: {t.batch_size} exceeds the "
                       f"{len(ds.y_train)} training examples")
  model = models.get(config.model.name, ds.num_classes)
  init_params = model.init(jax.random.key(config.seeds.init),
                           ds.x_train[:1])["params"]
  dense_mask = masks_lib.make_mask(init_params, config.pruning.prunable)
  prunable = masks_lib.prunable_names(dense_mask)
  for pattern in pruning.parse_layer_fractions(config.pruning.layer_fractions):
    rx = masks_lib.compile_patterns([pattern], "pruning.layer_fractions")[0]
    if not any(rx.fullmatch(n) for n in prunable):
      raise LotteryError(f"pruning.layer_fractions: {pattern!r} matches no "
                         f"prunable parameter (prunable: {prunable})")
  on_device = config.data.on_device and _fits_on_device(
      ds.x_train.nbytes + ds.y_train.nbytes)
  return Experiment(
      config=config, dataset=ds,
      data=train_lib.put_data(ds.x_train, ds.y_train, ds.x_test, ds.y_test,
                              x_val=x_val, y_val=y_val, on_device=on_device),
      model=model, trainer=train_lib.Trainer(model, optim.make_optimizer(t)),
      schedule=optim.make_schedule(t), init_params=init_params,
      dense_mask=dense_mask)


def _fits_on_device(nbytes: int) -> bool:
  """Whether a training set of `nbytes` fits in half the device's memory.

  Devices that report no limit (the CPU) always fit.
  """
  stats = jax.devices()[0].memory_stats() or {}
  limit = stats.get("bytes_limit")
  return limit is None or nbytes <= limit // 2


class _Progress:
  """Mid-run checkpoints of the job in flight, under <workdir>/progress."""

  def __init__(self, wd: os.PathLike):
    self.root = os.path.join(wd, "progress")
    self.meta = os.path.join(self.root, "progress.json")

  def save(self, job: str, state, history, captured) -> None:
    step = int(state["step"])
    name = f"{job.replace('/', '_')}_step{step:08d}"
    path = os.path.join(self.root, name)
    checkpoint.remove(path)  # A partial one from a crash before its rename.
    checkpoint.save(path, {
        "state": {str(i): x for i, x in enumerate(jax.tree.leaves(state))},
        "captured": {str(k): v for k, v in captured.items()}})
    old = self._read()
    checkpoint.write_json(self.meta, {"job": job, "step": step, "dir": name,
                                      "history": history})
    if old and old["dir"] != name:
      checkpoint.remove(os.path.join(self.root, old["dir"]))

  def load(self, job: str, template) -> tuple[Any, list, dict] | None:
    meta = self._read()
    if not meta or meta["job"] != job:
      return None
    arrays = checkpoint.restore(os.path.join(self.root, meta["dir"]))
    leaves, treedef = jax.tree.flatten(template)
    restored = [jnp.asarray(arrays["state"][str(i)], dtype=jnp.asarray(t).dtype)
                for i, t in enumerate(leaves)]
    captured = {int(k): v for k, v in arrays.get("captured", {}).items()}
    return jax.tree.unflatten(treedef, restored), meta["history"], captured

  def clear(self) -> None:
    checkpoint.remove(self.root)

  def _read(self):
    if os.path.exists(self.meta):
      return checkpoint.read_json(self.meta)
    return None


def _lr_fn(exp: Experiment, reset: str, round_: int):
  if reset == "finetune" and round_ > 0:
    final = float(exp.schedule(exp.config.training.steps - 1))
    return lambda a, b: np.full(b - a, final, np.float32)
  return lambda a, b: optim.learning_rates(exp.schedule, a, b)


def _train_job(exp: Experiment, wd, round_: int, kind: str, mask, start_params,
               start_step: int, lr_fn, writer, capture: tuple[int, ...] = (),
               capture_path: str = "", log=print, log_steps=False
               ) -> tickets.Ticket:
  """Loads a finished training run, or runs (resuming) and saves it.

  With `capture=(k,)` the weights at step k are saved to `capture_path`
  before the run is marked finished (the rewind point of round 0).
  """
  if tickets.is_finished(wd, round_, kind):
    return tickets.load_ticket(wd, round_, kind)
  job = f"round_{round_:03d}/{kind}"
  t = exp.config.training
  progress = _Progress(wd)
  t0 = time.time()
  start_params = jax.device_get(start_params)
  state = exp.trainer.init_state(start_params, start_step)
  resumed = progress.load(job, state)
  history, captured = [], {}
  if resumed:
    state, history, captured = resumed
    log(f"  {job}: resuming at step {int(state['step'])}")
  state, history, captured = train_lib.train(
      exp.trainer, state, mask, exp.data, stop=t.steps, lr_fn=lr_fn,
      batch_size=t.batch_size, data_seed=exp.config.seeds.data,
      eval_every=t.eval_every, checkpoint_every=t.checkpoint_every,
      capture=capture, history=history, captured=captured,
      on_checkpoint=lambda s, h, c: progress.save(job, s, h, c),
      log=(lambda m: log(f"  {job}{m}")) if log_steps else None)
  final = history[-1]
  metrics = {
      "round": round_, "kind": kind,
      "density": masks_lib.density(mask),
      "layer_densities": masks_lib.layer_densities(mask),
      "test_accuracy": final["accuracy"], "test_loss": final["loss"],
      "train_loss": final["train_loss"], "start_step": start_step,
      "steps": t.steps, "history": history, "time_s": time.time() - t0}
  if "val_loss" in final:
    # Early stopping (Frankle & Carbin 2019): the evaluation of minimum
    # validation loss, first one on ties.
    best = min(history, key=lambda h: h["val_loss"])
    metrics.update(early_stop_step=best["step"],
                   early_stop_test_accuracy=best["accuracy"],
                   val_loss=final["val_loss"],
                   val_accuracy=final["val_accuracy"])
  ticket = tickets.Ticket(round_, kind, jax.device_get(mask), start_params,
                          jax.device_get(state["params"]), metrics)
  if capture:
    (k,) = capture  # One rewind point, one path.
    checkpoint.remove(capture_path)  # One from a crash before the ticket.
    checkpoint.save(capture_path, captured[k])
  _finish_job(wd, ticket, writer)
  return ticket


def _finish_job(wd, ticket: tickets.Ticket, writer) -> None:
  tickets.save_ticket(wd, ticket)
  _Progress(wd).clear()
  if writer is not None:
    tag = f"{ticket.kind}/round_{ticket.round:03d}"
    for h in ticket.metrics["history"]:
      writer.add_scalar(f"{tag}/test_accuracy", h["accuracy"], h["step"])
      writer.add_scalar(f"{tag}/test_loss", h["loss"], h["step"])
      writer.add_scalar(f"{tag}/train_loss", h["train_loss"], h["step"])


def _record(t: tickets.Ticket, controls: dict[str, tickets.Ticket]) -> dict:
  keep = ("density", "test_accuracy", "test_loss", "train_loss")
  keep += tuple(k for k in ("early_stop_step", "early_stop_test_accuracy")
                if k in t.metrics)
  rec = {"round": t.round, **{k: t.metrics[k] for k in keep},
         "time_s": t.metrics["time_s"] + sum(
             c.metrics["time_s"] for c in controls.values())}
  if controls:
    rec["controls"] = {k: {m: c.metrics[m] for m in keep}
                       for k, c in controls.items()}
  return rec


def summary(workdir) -> dict:
  """The run's summary.json as a dict ({'rounds': [...], 'finished': bool})."""
  return checkpoint.read_json(os.path.join(workdir, "summary.json"))


def run(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
        log: Callable[[str], None] = print, log_steps: bool = False,
        on_round: Callable[[dict], None] | None = None) -> dict:
  """Runs (or resumes) an IMP experiment; returns its summary.

  Args:
    config: a config from `lottery.config.base_config()` or configs/.
    workdir: where everything is written; a workdir of an unfinished run
      of the same config is resumed, one of another config is refused.
    log: receives one progress line per round.
    log_steps: also log the test metrics of every evaluation.
    on_round: called with each round's summary record once it is finished.

  Returns:
    {'rounds': [{'round', 'density', 'test_accuracy', 'test_loss',
    'train_loss', 'time_s', 'controls': {name: {...}}}, ...],
    'finished': True}, also written to <workdir>/summary.json.
  """
  config_lib.validate(config)
  workdir_lib.check(workdir, config)  # Refuse before the long work ...
  exp = build(config)
  held = workdir_lib.claim(workdir, config)  # ... and write only after it.
  wd = held.path  # The workdir's lock is held until the run ends.
  p = config.pruning
  score_fn = scores_lib.get(p.score)
  control_key = jax.random.key(config.seeds.control)
  writer = _tensorboard(wd)
  rewind_base = exp.init_params
  rewind_path = os.path.join(wd, "rewind_point")
  capture = (p.rewind_step,) if p.reset == "rewind" and p.rewind_step else ()
  records, prev = [], None
  try:
    for r in range(p.rounds + 1):
      t0 = time.time()
      if r == 0:
        mask, base, start_step = exp.dense_mask, exp.init_params, 0
      else:
        key = jax.random.fold_in(jax.random.fold_in(control_key, _RANDOM_SCORE),
                                 r)
        mask = pruning.prune(prev.mask, score_fn(prev.trained_params, key),
                             p.fraction, scope=p.scope,
                             layer_fractions=p.layer_fractions)
        if p.reset == "rewind":
          base, start_step = rewind_base, p.rewind_step
        else:
          base, start_step = prev.trained_params, 0
      lr_fn = _lr_fn(exp, p.reset, r)
      job = dict(exp=exp, wd=wd, round_=r, start_step=start_step, lr_fn=lr_fn,
                 writer=writer, log=log, log_steps=log_steps)
      ticket = _train_job(
          mask=mask, start_params=masks_lib.apply_mask(mask, base),
          kind="ticket", capture=capture if r == 0 else (),
          capture_path=rewind_path, **job)
      if r == 0 and capture:
        rewind_base = checkpoint.restore(rewind_path)
      controls = {}
      with_controls = r and (r % config.controls_every == 0
                             or r == p.rounds)
      for name in (config.controls if with_controls else ()):
        ckey = jax.random.fold_in(control_key, r)
        if name == "reinit":
          cmask = mask
          cbase = exp.init(jax.random.fold_in(ckey, _REINIT))
        else:
          cmask = pruning.random_like(mask,
                                      jax.random.fold_in(ckey, _RANDOM_PRUNE))
          cbase = base
        controls[name] = _train_job(
            mask=cmask, start_params=masks_lib.apply_mask(cmask, cbase),
            kind=name, **job)
      rec = _record(ticket, controls)
      records.append(rec)
      checkpoint.write_json(os.path.join(wd, "summary.json"),
                            {"rounds": records, "finished": r == p.rounds})
      if writer is not None:
        writer.add_scalar("summary/density", rec["density"], r)
        writer.add_scalar("summary/ticket_test_accuracy",
                          rec["test_accuracy"], r)
        for k, c in rec.get("controls", {}).items():
          writer.add_scalar(f"summary/{k}_test_accuracy", c["test_accuracy"], r)
        writer.flush()
      ctl = "".join(f"  {k} {c['test_accuracy']:.4f}"
                    for k, c in rec.get("controls", {}).items())
      log(f"round {r:2d}/{p.rounds}  density {rec['density']:.4f}  "
          f"ticket {rec['test_accuracy']:.4f}{ctl}  ({time.time() - t0:.1f} s)")
      if on_round:
        on_round(rec)
      prev = ticket
  finally:
    if writer is not None:
      writer.close()
    held.release()
  return {"rounds": records, "finished": True}


def _tensorboard(wd):
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return SummaryWriter(os.path.join(wd, "tensorboard"))

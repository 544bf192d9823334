"""A job: one training run from a mask and starting weights to a Ticket.

Every method is a sequence of jobs: IMP's rounds and controls, pruning at
initialization's methods x densities x checks, sparse training's runs. A job
is resumable: a finished job is on disk (`lottery.tickets`) and is loaded, not
re-run; the job in flight resumes from its last mid-run checkpoint in
<workdir>/progress. Every input of a job is a pure function of the config and
earlier jobs' saved arrays, and step s's batch, augmentation and dropout
depend only on (data seed, s), so a resumed job ends bit-for-bit equal to an
uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lottery import checkpoint
from lottery import loop as loop_lib
from lottery import masks as masks_lib
from lottery import parallel
from lottery import step as step_lib
from lottery import tickets
from lottery.errors import Diverged, LotteryError
from lottery.experiment import Experiment


@dataclasses.dataclass
class Job:
  """One training run.

  Attributes:
    coords: its coordinates in the experiment, e.g. {'round': 3,
      'kind': 'ticket'}.
    path: its ticket directory, relative to the workdir.
    mask: the mask it trains (masked weights start at 0).
    params, model_state: the weights and model state it starts from.
    start_step, stop: it trains steps start_step..stop-1.
    lr_fn: (start, stop) -> the learning rates of those steps.
    data_seed: seeds the batch order, augmentation and dropout.
    capture: a step whose (params, model_state) to save (the rewind point).
    capture_path: where, relative to the workdir.
  """
  coords: dict
  path: str
  mask: Any
  params: Any
  model_state: Any
  start_step: int
  stop: int
  lr_fn: Callable[[int, int], np.ndarray]
  data_seed: int
  capture: int | None = None
  capture_path: str = ""

  @property
  def name(self) -> str:
    return label(self.coords)


def label(coords: dict) -> str:
  """A job's name in progress lines: its coordinates but the seed."""
  return " ".join(f"{v}" if k in ("kind", "method") else f"{k} {v}"
                  for k, v in coords.items() if k != "seed" and v is not None)


# Seconds a job must have run since it started, or since its last mid-run
# checkpoint, before the next one is written; read from this variable of the
# environment (default DEFAULT_CHECKPOINT_MIN_S).
CHECKPOINT_MIN_S = "LOTTERY_CHECKPOINT_MIN_S"
DEFAULT_CHECKPOINT_MIN_S = 30.0


def checkpoint_min_s() -> float:
  """The time floor of mid-run checkpoints, from $LOTTERY_CHECKPOINT_MIN_S.

  Raises:
    LotteryError: if it is set to anything but a finite number >= 0.
  """
  text = os.environ.get(CHECKPOINT_MIN_S, "").strip()
  if not text:
    return DEFAULT_CHECKPOINT_MIN_S
  try:
    value = float(text)
  except ValueError:
    value = math.nan
  if not 0 <= value < math.inf:
    raise LotteryError(f"{CHECKPOINT_MIN_S}: must be a number of seconds >= "
                       f"0 (got {text!r})")
  return value


PROGRESS = "progress"  # The workdir's folder of mid-run checkpoints.


class MidRun:
  """Mid-run checkpoints of the job in flight, under <workdir>/progress.

  `save` is called every `training.checkpoint_every` steps, and skips the
  checkpoint when the job started, or wrote its last one, less than
  `min_interval_s` seconds ago: on a job of a few seconds a checkpoint costs
  more than the work it protects. Which steps are saved never changes the
  results: a job resumed from an earlier checkpoint (or from its start)
  replays the same steps, as step s's batches depend only on (seed, s).
  """

  def __init__(self, workdir: os.PathLike, min_interval_s: float | None = None,
               program: str | None = None):
    """`min_interval_s`: default `checkpoint_min_s()`. `program`: how the job
    runs (replicate form, devices), kept with each checkpoint; `load` sets
    `saved_program` to the loaded checkpoint's."""
    self.root = os.path.join(workdir, PROGRESS)
    self.meta = os.path.join(self.root, "progress.json")
    self.min_interval_s = (checkpoint_min_s() if min_interval_s is None
                           else min_interval_s)
    self.program = program
    self.saved_program = None
    self.saved_first_loss = None
    self._last = time.monotonic()

  def save(self, job: str, state, history, captured,
           first_loss: Any = None) -> int | None:
    """Saves the job's checkpoint unless one was saved less than
    `min_interval_s` ago: the step saved, or None. `first_loss`: the loop's
    divergence reference (`loop.train`), kept for the resumed run."""
    if time.monotonic() - self._last < self.min_interval_s:
      return None
    step = int(state.step)
    name = f"{job.replace('/', '_')}_step{step:08d}"
    path = os.path.join(self.root, name)
    checkpoint.remove(path)  # A partial one from a crash before its rename.
    checkpoint.save(path, {
        "state": {str(i): x for i, x in enumerate(jax.tree.leaves(state))},
        "captured": {str(k): v for k, v in captured.items()}})
    old = self._read()
    checkpoint.write_json(self.meta, {"job": job, "step": step, "dir": name,
                                      "history": history,
                                      "first_loss": first_loss,
                                      "program": self.program})
    if old and old["dir"] != name:
      checkpoint.remove(os.path.join(self.root, old["dir"]))
    self._last = time.monotonic()
    return step

  def load(self, job: str, template) -> tuple[Any, list, dict] | None:
    meta = self._read()
    if not meta or meta["job"] != job:
      return None
    arrays = checkpoint.restore(os.path.join(self.root, meta["dir"]))
    leaves, treedef = jax.tree.flatten(template)
    restored = [jnp.asarray(arrays["state"][str(i)], dtype=jnp.asarray(t).dtype)
                for i, t in enumerate(leaves)]
    captured = {int(k): v for k, v in arrays.get("captured", {}).items()}
    self.saved_program = meta.get("program")
    self.saved_first_loss = meta.get("first_loss")
    return jax.tree.unflatten(treedef, restored), meta["history"], captured

  def clear(self) -> None:
    checkpoint.remove(self.root)

  @staticmethod
  def holds_own(workdir: os.PathLike) -> bool:
    """Whether <workdir>/progress is a folder of mid-run checkpoints alone
    (its progress.json, '<job>_step<8 digits>' checkpoints, leftovers)."""
    root = os.path.join(workdir, PROGRESS)
    if os.path.islink(root) or not os.path.isdir(root):
      return False
    return all(n == "progress.json" or re.fullmatch(r".+_step\d{8}", n) or
               checkpoint.is_leftover(n) for n in os.listdir(root))

  def _read(self):
    # A clear() still queued (`checkpoint.background_writes`) counts as done.
    if checkpoint.exists(self.meta):
      return checkpoint.read_json(self.meta)
    return None


def tensorboard_writer(workdir, path: str, purge_step: int):
  """A TensorBoard writer for one job: one run per job, so the curves of
  rounds overlay; events at or after `purge_step` from an interrupted
  attempt are hidden, so a resumed job shows no duplicate points."""
  if not checkpoint.is_writer():
    return None
  # tensorboardX imports torch when it is installed (1-3 s per run) and does
  # not need it to write scalars: hide it during the import.
  hide = "torch" not in sys.modules
  if hide:
    sys.modules["torch"] = None
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  finally:
    if hide:
      del sys.modules["torch"]
  # A unique file name: TensorBoard names files by the second, and a resumed
  # job must not overwrite the events of its first attempt.
  logdir = os.path.join(workdir, "tensorboard", path)
  return _DiskChecked(lambda: SummaryWriter(
      logdir, purge_step=purge_step,
      filename_suffix=f".{os.getpid()}.{time.time_ns()}"), logdir)


class _DiskChecked:
  """A TensorBoard writer whose writes turn a full disk into the one-line
  LotteryError of `checkpoint.disk_errors`, like every other write. Its
  events file is created at the first write: a run refused before it writes
  anything (a damaged checkpoint found at resume) leaves no file."""

  def __init__(self, make: Callable[[], Any], logdir: str):
    self._make, self._writer, self._logdir = make, None, logdir

  def add_scalar(self, *args, **kwargs) -> None:
    with checkpoint.disk_errors(self._logdir):
      if self._writer is None:
        self._writer = self._make()
      self._writer.add_scalar(*args, **kwargs)

  def flush(self) -> None:
    if self._writer is not None:
      with checkpoint.disk_errors(self._logdir):
        self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      with checkpoint.disk_errors(self._logdir):
        self._writer.close()


def _write_eval(writer, h: dict) -> None:
  """One evaluation record's curves, if a TensorBoard writer is open."""
  if writer is None:
    return
  for k in ("accuracy", "loss", "val_accuracy", "val_loss"):
    if k in h:
      writer.add_scalar(f"test_{k}" if "val" not in k else k, h[k],
                        h["step"])
  writer.add_scalar("train_loss", h["train_loss"], h["step"])
  writer.flush()


def load_capture(workdir, path: str) -> tuple[Any, Any]:
  """The (params, model_state) a job captured (see `Job.capture`)."""
  arrays = checkpoint.restore(os.path.join(workdir, path))
  return arrays["params"], arrays.get("model_state", {})



def _replicate_history(history: list[dict], i: int) -> list[dict]:
  """Replicate i's history out of a stacked run's (lists per metric)."""
  return [{k: v[i] if isinstance(v, list) else v for k, v in h.items()}
          for h in history]


def _metrics(job: Job, mask, history: list[dict], t0: float) -> dict:
  """A finished job's metrics (see `run_job`)."""
  final = history[-1]
  metrics = {
      **job.coords,
      "density": masks_lib.density(mask),
      "layer_densities": masks_lib.layer_densities(mask),
      "test_accuracy": final["accuracy"], "test_loss": final["loss"],
      "train_loss": final["train_loss"], "start_step": job.start_step,
      "steps": job.stop, "history": history, "time_s": time.time() - t0}
  if "val_loss" in final:
    # Early stopping (Frankle & Carbin 2019): the evaluation of minimum
    # validation loss, first one on ties.
    best = min(history, key=lambda h: h["val_loss"])
    metrics.update(early_stop_step=best["step"],
                   early_stop_test_accuracy=best["accuracy"],
                   val_loss=final["val_loss"],
                   val_accuracy=final["val_accuracy"])
  return metrics


def run_job(exp: Experiment, job: Job, workdir, *, progress=None,
            tensorboard: bool = True,
            log_steps: Callable[[str], None] | None = None
            ) -> tickets.Ticket:
  """Loads a finished job, or trains it (resuming) and saves its Ticket:
  `run_group` of one job."""
  return run_group(exp, [job], workdir, progress=progress,
                   tensorboard=tensorboard, log_steps=log_steps)[0]


def run_group(exp: Experiment, jobs: list[Job], workdir, *,
              progress=None, tensorboard: bool = True,
              log_steps: Callable[[str], None] | None = None
              ) -> list[tickets.Ticket]:
  """Trains a group of replicate jobs together; returns their Tickets.

  The one job path of every method. `jobs` differ only in their arrays
  (mask, params, model state), data seed, coordinates and paths; they share
  start_step, stop, lr_fn and capture step. Several jobs run as one stacked
  state in one compiled program (`loop.Loop`: on the CPU the step once per
  replicate, each job's arithmetic that of its single run; otherwise vmapped
  over the replicates, laid over the experiment's mesh); one job runs
  unstacked. Finished groups are
  loaded; the group in flight resumes from its mid-run checkpoint (keyed by
  its first job's path, and the number of jobs when there are several).

  Returns:
    The jobs' Tickets in order; their metrics hold 'density',
    'layer_densities', 'test_accuracy', 'test_loss', 'train_loss',
    'history', 'time_s', and with a validation set 'early_stop_step' and
    'early_stop_test_accuracy'.
  """
  first = jobs[0]
  for j in jobs[1:]:
    if (j.start_step, j.stop, j.capture) != (first.start_step, first.stop,
                                             first.capture):
      raise ValueError("run_group: jobs must share start_step, stop and "
                       "capture")
  if all(tickets.is_finished(workdir, j.path) for j in jobs):
    return [tickets.read_ticket(workdir, j.path) for j in jobs]
  t = exp.config.training
  stacked = len(jobs) > 1
  mesh = exp.loop.mesh
  midrun = MidRun(workdir, program=(
      f"{exp.loop.replicas if stacked else 'one replicate'} on "
      f"{'one device' if mesh is None else parallel.describe(mesh)}"))
  t0 = time.time()
  key = f"{first.path}+{len(jobs)}" if stacked else first.path
  states = [step_lib.init_state(j.params, exp.tx, mask=j.mask,
                                model_state=j.model_state,
                                step=j.start_step, seed=j.data_seed)
            for j in jobs]
  # The tickets' start: the masked weights (host copies; the state is
  # donated to the loop).
  starts = jax.device_get([(s.params, s.model_state) for s in states])
  state = loop_lib.stack_states(states) if stacked else states[0]
  resumed = midrun.load(key, state)
  history, captured = [], {}
  if resumed:
    state, history, captured = resumed
  at = int(state.step)
  if exp.loop.mesh is not None:
    state = parallel.put_tree(
        parallel.to_host(state),
        parallel.state_sharding(exp.loop.mesh, state, stacked))
  # Stacked: the coordinates the jobs share (a stability pair's copies
  # differ in 'copy'), and how many.
  name = first.name if not stacked else label(
      {k: v for k, v in first.coords.items()
       if all(j.coords.get(k) == v for j in jobs)}) + f" x{len(jobs)}"
  if progress is not None:
    if resumed and midrun.saved_program not in (None, midrun.program):
      # Bit-identical resume holds for one program (docs/runs.md).
      progress.info(f"note: {name} resumes from step {at}, checkpointed "
                    f"running {midrun.saved_program} and continued running "
                    f"{midrun.program}: its result equals neither's "
                    f"uninterrupted run")
    progress.job_start(name, at, first.stop)
  capture = () if first.capture is None else (first.capture,)
  # Evaluations up to the resumed step are in `history` (and already
  # written); any written after it by an interrupted attempt are purged.
  writers = [tensorboard_writer(workdir, j.path, at + 1)
             if tensorboard else None for j in jobs]
  one = (lambda tree, i: loop_lib.unstack(tree, i)) if stacked else (
      lambda tree, i: tree)
  replica_history = ((lambda hs, i: _replicate_history(hs, i)) if stacked
                     else (lambda hs, i: hs))

  def on_checkpoint(s, h, c, first_loss):
    saved = midrun.save(key, parallel.to_host(s), h, c, first_loss)
    if saved is not None and progress is not None:
      progress.job_saved(saved)

  def on_eval(h):
    for i, writer in enumerate(writers):
      _write_eval(writer, replica_history([h], i)[0])
    if log_steps:
      acc = np.asarray(h["accuracy"])
      spread = f" ± {acc.std():.4f}" if stacked else ""
      log_steps(f"  {name}  step {h['step']:6d}  train loss "
                f"{np.mean(h['train_loss']):.4f}  test loss "
                f"{np.mean(h['loss']):.4f}  test acc {acc.mean():.4f}"
                f"{spread}")

  try:
    state, history, captured = loop_lib.train(
        exp.loop, state, exp.data, stop=first.stop, lr_fn=first.lr_fn,
        batch_size=t.batch_size,
        data_seed=[j.data_seed for j in jobs] if stacked else first.data_seed,
        eval_every=t.eval_every, checkpoint_every=t.checkpoint_every,
        capture=capture, history=history, captured=captured,
        on_checkpoint=on_checkpoint,
        first_loss=midrun.saved_first_loss if resumed else None,
        on_chunk=progress.job_step if progress is not None else None,
        on_eval=on_eval)
  except Diverged as e:
    job = jobs[e.replicate or 0]
    seed = job.coords.get("seed")
    raise e.within(job.name + ("" if seed is None else f" seed {seed}")
                   ) from None
  finally:
    for writer in writers:
      if writer is not None:
        writer.close()
  final = parallel.to_host({"mask": state.mask, "params": state.params,
                            "model_state": state.model_state})
  out = []
  for i, j in enumerate(jobs):
    mask = one(final["mask"], i)
    ticket = tickets.Ticket(
        coords=dict(j.coords), mask=mask, rewind_params=starts[i][0],
        trained_params=one(final["params"], i),
        metrics=_metrics(j, mask, replica_history(history, i), t0),
        model_state=one(final["model_state"], i),
        rewind_model_state=starts[i][1])
    if j.capture is not None:
      path = os.path.join(workdir, j.capture_path)
      checkpoint.remove(path)  # One from a crash before the ticket.
      checkpoint.save(path, tickets.drop_none(one(captured[j.capture], i)))
    tickets.save_ticket(workdir, j.path, ticket)
    out.append(ticket)
  midrun.clear()
  parallel.barrier(key)  # Others read what process 0 wrote.
  if progress is not None:
    progress.job_end()
  return out


# The name the drivers used before `run_group` served both cases.
run_replicates = run_group

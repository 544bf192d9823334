"""The method plug-in protocol: what a method tells the one driver.

A method (IMP, pruning at init, sparse training, ...) is a `Method` subclass
registered by name (`@register`); a config names it in `config.method`. It
says

  grid(ctx)          the groups of its run, in run order: each a dict of
                     coordinates without `seed` (a group is the `seeds.num`
                     replicates of one job, trained in one compiled program);
  directory(coords)  a group's ticket directory, relative to the workdir
                     (the store adds the replicate's `seed_<i>`);
  replicas(...)      the jobs of a group (default: one per replicate);
  start(ctx, coords) how the group's replicates start (`GroupStart`: masks,
                     weights, model states, first step, rates, capture, and
                     optionally an experiment with a mask-update hook), made
                     from the config and earlier groups' tickets
                     (`ctx.tickets(coords)`); called only for a group that is
                     not finished;
  record(ctx, done)  the summary records of a finished group, one per
                     replicate;
  summarize(...)     summary.json's body from every finished group's records
                     (default {summary_key: all records, flat});
  report(...)        the progress line (and summary scalars) after a group.

The driver (`lottery.driver.run`) does everything else the same way for
every method: validation, the workdir claim, resuming, training
(`jobs.run_group`), tickets, summary.json, progress and TensorBoard.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable
from typing import Any

import ml_collections
import numpy as np

from lottery import config as config_lib
from lottery import tickets
from lottery.controls import Start
from lottery.registry import Registry

__all__ = ["Context", "Done", "GroupStart", "Method", "Replica", "Report", "Start",
           "get", "names", "register", "unregister"]


@dataclasses.dataclass(frozen=True)
class Replica:
  """One job of a group: its coordinates beside the group's (e.g.
  {'seed': 2}; the stability analysis adds 'copy') and its data seed. Its
  ticket directory is the group's with '<name>_<value>' per coordinate."""
  coords: dict
  data_seed: int


@dataclasses.dataclass
class GroupStart:
  """How the replicates of one group start.

  Attributes:
    starts: one `Start` (mask, params, model state) per replica
      (`Method.replicas`).
    start_step: the first step trained (steps start_step..stop-1).
    stop: the step training stops at; None: training.steps.
    lr_fn: (start, stop) -> rates; None: the config's schedule.
    capture: a step whose (params, model_state) each replicate saves at
      `capture_paths[i]` (IMP's rewind point), or None.
    capture_paths: relative paths, one per replicate.
    exp: the experiment to train with (a copy with a mask-update hook or a
      tracked loop); None: the run's.
    initial_masks: save each replicate's starting mask beside its ticket
      (`Ticket.initial_mask`), for methods that change the mask.
  """
  starts: list[Start]
  start_step: int = 0
  stop: int | None = None
  lr_fn: Callable[[int, int], np.ndarray] | None = None
  capture: int | None = None
  capture_paths: list[str] | None = None
  exp: Any = None
  initial_masks: bool = False


@dataclasses.dataclass
class Done:
  """A finished group: its coordinates, tickets, directories, records, and
  the wall time this process spent on it. The driver drops the tickets
  (None) of all but its latest groups; `Context.tickets` reads them again."""
  coords: dict
  tickets: list[tickets.Ticket] | None
  paths: list[str]
  records: list[dict] = dataclasses.field(default_factory=list)
  time_s: float = 0.0


@dataclasses.dataclass
class Report:
  """What the driver shows after a group: a progress line, scalars for the
  run's 'summary' TensorBoard run ({tag: value} at `step`), and the summary
  record that the group completes, if any (IMP's round, once its controls
  are done)."""
  line: str | None = None
  scalars: dict[str, float] = dataclasses.field(default_factory=dict)
  step: int = 0
  record: dict | None = None


@dataclasses.dataclass
class Context:
  """One run of a method: its config, built experiment, workdir and
  progress, its grid, the groups finished so far, and `state`, the method's own
  scratch space for this run (e.g. IMP's rewind points)."""
  config: ml_collections.ConfigDict
  exp: Any
  workdir: pathlib.Path
  progress: Any
  method: Method
  grid: list[dict] = dataclasses.field(default_factory=list)
  done: dict[str, Done] = dataclasses.field(default_factory=dict)
  state: dict[str, Any] = dataclasses.field(default_factory=dict)
  # Whether the workdir holds this run already (a resume or an extension):
  # a rule newer than the run may let it be.
  resumes: bool = False

  @property
  def replicates(self) -> int:
    return self.config.seeds.num

  def replicas(self, coords: dict) -> list[Replica]:
    return self.method.replicas(self, coords)

  def paths(self, coords: dict) -> list[str]:
    """The ticket directories of a group's replicas."""
    reps = self.replicas(coords)
    bare = len(reps) == 1 and not self.method.seed_dir_when_single
    return [tickets.replica_path(self.method.directory(coords), r.coords,
                                 bare=bare) for r in reps]

  def is_finished(self, coords: dict) -> bool:
    return all(tickets.is_finished(self.workdir, p)
               for p in self.paths(coords))

  def init(self, i: int) -> tuple[Any, Any]:
    """Replicate i's initial (params, model_state), drawn once per run."""
    key = ("init", i)
    if key not in self.state:
      self.state[key] = self.exp.replicate_init(i)
    return self.state[key]

  def tickets(self, coords: dict) -> list[tickets.Ticket]:
    """The tickets of a finished group (this run's, or loaded from disk)."""
    key = group_key(coords)
    if key in self.done and self.done[key].tickets is not None:
      return self.done[key].tickets
    return [tickets.read_ticket(self.workdir, p) for p in self.paths(coords)]


def group_key(coords: dict) -> str:
  """A group's coordinates as one hashable string."""
  return repr(sorted(coords.items()))


class Method:
  """A method plug-in; see the module doc. Subclasses set `name` and
  implement `grid`, `directory` and `start`."""

  name: str = ""
  # The key of summary.json's list of records.
  summary_key: str = "runs"
  # A run of one replicate writes its tickets without a seed_0 directory
  # (IMP's layout: rounds/round_003/ticket).
  seed_dir_when_single: bool = True
  # The config blocks (or single fields, 'pruning.prunable') it reads beside
  # the shared ones (method, seeds, data, model, training): a run's
  # config.json and --help show only these; another method's field set to a
  # non-default value is refused.
  fields: tuple[str, ...] = ()
  # The notebook (in notebooks/) that analyses this method's workdirs; ''
  # for none (the run's end then names the report).
  notebook: str = ""

  def check(self, config: ml_collections.ConfigDict) -> None:
    """Validates `config` (LotteryError naming the field); before anything
    is built or written."""
    config_lib.validate(config)

  def before_claim(self, ctx: Context) -> None:
    """Checks that need the built experiment; before anything is written."""

  def verify_finished(self, ctx: Context, coords: dict) -> None:
    """Reads what a finished group keeps beside its tickets (LotteryError for
    a damaged file), before anything is written; its tickets are read by
    the driver."""

  def stacked(self, config: ml_collections.ConfigDict) -> int:
    """The replicates the mesh's replicate axis is sized for
    (`parallel.make_mesh`): seeds.num, the jobs of a group."""
    return config.seeds.num

  def grid(self, ctx: Context) -> list[dict]:
    raise NotImplementedError

  def replicas(self, ctx: Context, coords: dict) -> list[Replica]:
    """The jobs of a group (default: replicate i of `seeds.num`, data seed
    seeds.data + i)."""
    return [Replica({"seed": i}, ctx.config.seeds.data + i)
            for i in range(ctx.replicates)]

  def directory(self, coords: dict) -> str:
    raise NotImplementedError

  def start(self, ctx: Context, coords: dict) -> GroupStart:
    raise NotImplementedError

  def record(self, ctx: Context, done: Done) -> list[dict]:
    """One summary record per replicate: coordinates, scalar metrics,
    `ticket` (its directory)."""
    keep = ("density", "layer_densities", "test_accuracy", "test_loss",
            "train_loss", "time_s", "early_stop_step",
            "early_stop_test_accuracy")
    return [{**t.coords, **{k: t.metrics[k] for k in keep if k in t.metrics},
             "ticket": p} for t, p in zip(done.tickets, done.paths)]

  def summarize(self, ctx: Context, done: list[Done]) -> dict:
    """summary.json's body (the driver adds 'finished')."""
    return {self.summary_key: [r for d in done for r in d.records]}

  def report(self, ctx: Context, done: Done) -> Report | None:
    """The line shown after a group (default: its mean test accuracy)."""
    acc = np.asarray([r["test_accuracy"] for r in done.records], float)
    coords = " ".join(f"{v}" for v in done.coords.values())
    spread = (f" ± {acc.std():.4f} ({len(acc)} seeds)" if len(acc) > 1
              else "")
    return Report(f"{coords}  test acc {acc.mean():.4f}{spread}  "
                  f"({done.time_s:.1f} s)")


_METHODS = Registry("method", "method")
names = _METHODS.names


def register(cls: type[Method]) -> type[Method]:
  """Class decorator: registers a `Method` subclass under its `name`."""
  _METHODS.register(cls.name)(cls)
  return cls


def unregister(name: str) -> type[Method]:
  """Removes the method `name` and returns its class (the undo of
  `register`; LotteryError if `name` is not registered)."""
  return _METHODS.unregister(name)


def get(name: str) -> Method:
  """A new instance of the method registered as `name`."""
  return _METHODS.get(name)()

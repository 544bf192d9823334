"""The one driver: runs any method plug-in (`lottery.method`) in a workdir.

`run(config, workdir)` validates everything (the method's checks, the
data's fingerprint, the workdir), builds the experiment, claims the workdir,
then runs the method's groups in order: a finished group is loaded, the
group in flight resumes, the others train (`jobs.run_group`: a group's
replicates in one compiled program). After every group it writes
summary.json (the method's records, 'finished' once all groups are),
the 'summary' TensorBoard run and a progress line -- the same way for every
method.

Resume order: the method's grid, group by group; within a group, the order
of `jobs.run_group` (mid-run checkpoints under <workdir>/progress, then the
tickets, then summary.json).
"""

from __future__ import annotations

import os
import pathlib
import time
from collections.abc import Callable

import ml_collections

from lottery import checkpoint
from lottery import config as config_lib
from lottery import jobs as jobs_lib
from lottery import method as method_lib
from lottery import tickets
from lottery.errors import LotteryError
from lottery.experiment import checked
from lottery.experiment import prepared
from lottery.progress import NullProgress

__all__ = ["check", "expect_method", "method_of", "run", "summary",
           "workdir_method"]


def summary(workdir) -> dict:
  """A run's summary.json as a dict (its records, 'finished')."""
  return tickets.summary(workdir)


def run(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
        method: str | None = None, progress=None,
        log: Callable[[str], None] | None = None, log_steps: bool = False,
        on_group: Callable[[method_lib.Done, method_lib.Report | None],
                           None] | None = None) -> dict:
  """Runs (or resumes) the experiment of `config` in `workdir`.

  Args:
    config: a config from `lottery.base_config()` or configs/; its
      `method` field names the method plug-in.
    workdir: where everything is written; a workdir of an unfinished run
      of the same config is resumed, one of another config is refused.
    method: if given, the method the caller expects; a config of another
      method is refused (the launchers of one method use it).
    progress: a `lottery.progress.Progress`; default: none shown.
    log: receives the per-group lines when no `progress` is given.
    log_steps: also log the test metrics of every evaluation.
    on_group: called with each group (`method.Done`) once it is finished,
      and the method's `Report` of it.

  Returns:
    The summary, also written to <workdir>/summary.json:
    {<the method's summary_key>: [record, ...], 'finished': True}.

  Raises:
    LotteryError: on bad input, before anything is written.
  """
  if progress is None:
    progress = NullProgress(log)
  config, saved, m = resolve(config, method)
  box = {}
  with prepared(config, workdir, progress,
                **_checks(config, saved, m, progress, box)) as (_, wd):
    ctx = box["ctx"]
    ctx.workdir = wd
    # Every finished group's tickets are read (verified) before anything is
    # written: a damaged one is refused with the workdir as it was.
    finished = _load_finished(ctx)
    # Every group's record is rebuilt (finished ones loaded), so the summary
    # run is rewritten from its first step: purge_step=0 leaves no
    # duplicates.
    writer = jobs_lib.tensorboard_writer(wd, "summary", 0)
    try:
      return _groups(ctx, writer, progress.line if log_steps else None,
                     on_group, finished)
    finally:
      if writer is not None:
        writer.close()


def _checks(config, saved, m: method_lib.Method, progress, box: dict
            ) -> dict:
  """`experiment.checked`'s arguments for method `m`; its `before_claim`
  leaves the method's context in box['ctx']."""
  jobs_lib.checkpoint_min_s()  # A bad $LOTTERY_CHECKPOINT_MIN_S, now.

  def before_claim(exp, holds):
    box["ctx"] = method_lib.Context(config, exp, None, progress, m,
                                    resumes=holds)
    m.before_claim(box["ctx"])
  return dict(check=m.check, before_claim=before_claim,
              facts={"method": m.name}, saved=saved,
              replicates=m.stacked(config))


def check(config: ml_collections.ConfigDict,
          workdir: str | os.PathLike | None = None, *,
          method: str | None = None) -> bool:
  """Everything `run` checks before it writes, writing nothing: the config,
  the data (loaded), the model (built), the workdir (if given) and the
  method's checks of the built experiment (`--dry_run`).

  Returns:
    Whether `workdir` holds this run already (it would resume or extend).

  Raises:
    LotteryError: as `run` would, before writing anything.
  """
  config, saved, m = resolve(config, method)
  return checked(config, workdir, **_checks(config, saved, m, NullProgress(),
                                            {}))[2]


def workdir_method(workdir: str | os.PathLike) -> str:
  """The method of the run in `workdir` (its config's `method`; for a run
  written before configs named their method, what its layout shows).

  Raises:
    LotteryError: ('workdir: ...') if `workdir` holds no run.
  """
  from lottery import runs  # pylint: disable=g-import-not-at-top
  from lottery import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  config = runs.load_config(workdir)
  return config.get("method") or workdir_lib.legacy_method(
      pathlib.Path(workdir), "imp")


def expect_method(workdir: str | os.PathLike, name: str) -> None:
  """Raises a one-line LotteryError naming the notebook that fits, if the
  run in `workdir` is not of method `name` (for notebooks)."""
  found = workdir_method(workdir)
  if found != name:
    nb = method_lib.get(found).notebook
    where = (f"open notebooks/{nb}" if nb else
             f"its records are in {tickets.SUMMARY} (lottery.records)")
    raise LotteryError(f"workdir: {os.fspath(workdir)!r} holds a run of "
                       f"method {found!r}, not {name!r}; {where}")


def resolve(config: ml_collections.ConfigDict, expected: str | None = None
            ) -> tuple[ml_collections.ConfigDict, ml_collections.ConfigDict,
                       method_lib.Method]:
  """(the complete config, the fields its method reads, the method).

  The complete config has every field (absent ones at their defaults: a
  config.json holds only its method's); the second is what the workdir's
  config.json holds and a rerun is compared with.

  Raises:
    LotteryError: for an unknown field or method, a config of another
      method than `expected`, or another method's field set.
  """
  config = config_lib.complete(config)
  m = _method(config, expected)
  return config, config_lib.for_method(config, m.name, m.fields), m


def method_of(config: ml_collections.ConfigDict) -> method_lib.Method:
  """The method plug-in `config.method` names."""
  return _method(config, None)


def _method(config, expected: str | None) -> method_lib.Method:
  name = config.get("method") if hasattr(config, "get") else None
  if not isinstance(name, str) or name not in method_lib.names():
    raise LotteryError(f"method: must be one of {method_lib.names()} "
                       f"(got {name!r})")
  if expected is not None and name != expected:
    raise LotteryError(
        f"method: this launcher runs {expected!r} recipes, the config is "
        f"{'an' if name[:1] in 'aeiou' else 'a'} {name!r} recipe; run it "
        f"with lottery.driver.run(config, workdir) (from a shell: python -m "
        f"experiments.run)")
  return method_lib.get(name)


def _write_summary(wd, summary: dict, *, unless_same: bool) -> None:
  """Writes summary.json; with `unless_same`, not if it holds `summary`
  already (a rerun that only read its groups back)."""
  path = os.path.join(wd, tickets.SUMMARY)
  if unless_same:
    try:
      if checkpoint.read_json(path) == checkpoint.json_form(summary):
        return
    except (OSError, ValueError, LotteryError):
      pass
  checkpoint.write_json(path, summary)


def _load_finished(ctx: method_lib.Context) -> set[int]:
  """Sets the run's grid; the indices of its finished groups, each ticket
  read once to verify it (LotteryError for a damaged one, before anything
  is written) and not kept: a long run's tickets would not fit in memory
  together. `_groups` reads them again, one group at a time."""
  grid = ctx.grid = ctx.method.grid(ctx)
  finished = set()
  for i, c in enumerate(grid):
    if ctx.is_finished(c):
      for p in ctx.paths(c):
        tickets.read_ticket(ctx.workdir, p)
      ctx.method.verify_finished(ctx, c)
      finished.add(i)
  return finished


# Groups whose tickets the driver keeps in memory (the latest ones: IMP's
# next round prunes its previous round's ticket); older groups keep their
# records, and `Context.tickets` reads their tickets from disk.
KEPT_GROUPS = 8


def _groups(ctx: method_lib.Context, writer, log_line, on_group,
            finished: set[int]) -> dict:
  m, wd = ctx.method, ctx.workdir
  grid = ctx.grid
  ctx.progress.jobs(total=len(grid),
                    done=sum(ctx.is_finished(c) for c in grid))
  if finished:
    ctx.progress.info(f"resuming {os.fspath(wd)}: {len(finished)} of the "
                      f"run's {len(grid)} groups were finished (read back, "
                      f"not trained again)")
  done: list[method_lib.Done] = []
  points: list[method_lib.Report] = []
  wrote = False
  for i, coords in enumerate(grid):
    t0 = time.time()
    paths = ctx.paths(coords)
    if i in finished:
      # Resumed: its start (a SynFlow mask, say) is not recomputed.
      ts = [tickets.read_ticket(wd, p) for p in paths]
    else:
      ts = _train(ctx, coords, paths, log_line)
    # What follows (its records: a stability pair's path evaluation, which
    # a resumed group may not have yet) is where an interrupt stops.
    ctx.progress.group_trained(jobs_lib.label(coords))
    d = method_lib.Done(coords, ts, paths, time_s=time.time() - t0)
    d.records = m.record(ctx, d)
    ctx.done[method_lib.group_key(coords)] = d
    done.append(d)
    last = i == len(grid) - 1
    if i not in finished or last:
      # Groups read back leave the summary as it is (a rerun killed while
      # reading them must not leave a shorter, unfinished one), until a
      # group trains or the last is read.
      _write_summary(wd, {**m.summarize(ctx, done), "finished": last},
                     unless_same=i in finished)
    rep = m.report(ctx, d)
    if rep is not None:
      if rep.line:
        ctx.progress.line(rep.line)
      if writer is not None and rep.scalars:
        # The points of groups finished before are written with the first
        # group this process finishes (the new events file shows them all,
        # purge_step=0): a rerun with nothing left to do, or refused on the
        # way (a damaged checkpoint), leaves no events file.
        # Once one is written, every later group's point follows at once.
        points.append(rep)
        if i not in finished or wrote:
          for p in points:
            for tag, value in p.scalars.items():
              writer.add_scalar(tag, value, p.step)
          points.clear()
          writer.flush()
          wrote = True
    if on_group:
      on_group(d, rep)
    if i >= KEPT_GROUPS:
      done[i - KEPT_GROUPS].tickets = None
  if jobs_lib.MidRun.holds_own(wd):
    # Left by a run killed after its last ticket, before it was cleared.
    jobs_lib.MidRun(wd).clear()
  notebook = (f"notebook: LOTTERY_WORKDIR={os.fspath(wd)} jupyter lab "
              f"notebooks/{m.notebook}; " if m.notebook else
              f"figures: python -m experiments.report {os.fspath(wd)} "
              f"--out=DIR; ")
  ctx.progress.info(
      f"results: {os.path.join(wd, tickets.SUMMARY)}; tickets: "
      f"lottery.load_ticket({os.fspath(wd)!r}, ...); {notebook}"
      f"curves: tensorboard --logdir {os.path.join(wd, 'tensorboard')}")
  return {**m.summarize(ctx, done), "finished": True}


def _train(ctx: method_lib.Context, coords: dict, paths: list[str],
           log_line) -> list[tickets.Ticket]:
  """Trains one group from the method's start; returns its tickets."""
  c = ctx.config
  g = ctx.method.start(ctx, coords)
  exp = g.exp if g.exp is not None else ctx.exp
  jobs = []
  for s, r, path in zip(g.starts, ctx.replicas(coords), paths, strict=True):
    if g.initial_masks:
      tickets.save_initial_mask(ctx.workdir, path, s.mask)
    jobs.append(jobs_lib.Job(
        coords={**coords, **r.coords}, path=path, mask=s.mask,
        params=s.params, model_state=s.model_state, start_step=g.start_step,
        stop=c.training.steps if g.stop is None else g.stop,
        lr_fn=g.lr_fn or ctx.exp.learning_rates, data_seed=r.data_seed,
        capture=g.capture,
        capture_path=g.capture_paths[len(jobs)] if g.capture_paths else ""))
  ts = jobs_lib.run_group(exp, jobs, ctx.workdir, progress=ctx.progress,
                          log_steps=log_line)
  if g.initial_masks:
    for t, j in zip(ts, jobs):
      t.initial_mask = j.mask
  return ts

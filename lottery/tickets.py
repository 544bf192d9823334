"""Tickets on disk: each training run of an experiment, checkpointed.

Layout of a workdir (see `lottery.imp`):

  <workdir>/config.json                      the resolved config
  <workdir>/summary.json                     every finished round
  <workdir>/rounds/round_003/ticket/         round 3's ticket:
      arrays/   orbax: mask, rewind_params, trained_params
      metrics.json                           written last: marks it finished
  <workdir>/rounds/round_003/reinit/         its controls, same layout
  <workdir>/rounds/round_003/random_prune/
  <workdir>/progress/                        the run in flight (resumable)
  <workdir>/tensorboard/                     TensorBoard event files
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any

from lottery import checkpoint
from lottery import masks as masks_lib
from lottery.errors import LotteryError

KINDS = ("ticket", "reinit", "random_prune")


@dataclasses.dataclass
class Ticket:
  """One training run of an experiment: a ticket or one of its controls.

  Attributes:
    round: the IMP round (0 = dense).
    kind: 'ticket', 'reinit' or 'random_prune'.
    mask: the mask pytree (bool arrays; None for non-prunable leaves).
    rewind_params: the weights training started from (masked).
    trained_params: the weights at the end of training.
    metrics: at least 'density' and 'test_accuracy'; also 'test_loss',
      'layer_densities', 'history' (test metrics every eval_every steps), ...
  """
  round: int
  kind: str
  mask: Any
  rewind_params: Any
  trained_params: Any
  metrics: dict


def run_dir(workdir: str | os.PathLike, round_: int, kind: str = "ticket"
            ) -> pathlib.Path:
  return pathlib.Path(workdir) / "rounds" / f"round_{round_:03d}" / kind


def is_finished(workdir, round_: int, kind: str = "ticket") -> bool:
  return (run_dir(workdir, round_, kind) / "metrics.json").exists()


def _drop_none(tree):
  """The mask without its None leaves (and without subtrees left empty)."""
  if isinstance(tree, dict):
    out = {k: _drop_none(v) for k, v in tree.items() if v is not None}
    return {k: v for k, v in out.items() if not (isinstance(v, dict) and not v)}
  return tree


def _mask_like(saved: dict, params: Any) -> Any:
  """Rebuilds a mask (None where not prunable) over `params`' structure."""
  if isinstance(params, dict):
    return {k: _mask_like(saved.get(k, {}) if isinstance(saved, dict) else {},
                          v) for k, v in params.items()}
  return None if isinstance(saved, dict) else saved


def save_ticket(workdir, ticket: Ticket) -> None:
  """Writes a ticket; its metrics.json, written last, marks it finished."""
  d = run_dir(workdir, ticket.round, ticket.kind)
  d.mkdir(parents=True, exist_ok=True)
  # A crash between the two writes leaves arrays without metrics: redo them.
  checkpoint.remove(d / "arrays")
  checkpoint.save(d / "arrays", {
      "mask": _drop_none(ticket.mask),
      "rewind_params": ticket.rewind_params,
      "trained_params": ticket.trained_params})
  checkpoint.write_json(d / "metrics.json", ticket.metrics)


def load_ticket(workdir: str | os.PathLike, round: int,  # pylint: disable=redefined-builtin
                kind: str = "ticket", *, like: Any = None) -> Ticket:
  """Loads a finished ticket (or control) of a run.

  Args:
    workdir: the run's workdir.
    round: the IMP round (0 = dense).
    kind: 'ticket' (default), 'reinit' or 'random_prune'.
    like: optional params of the model the ticket is meant for; a ticket of
      other parameter names or shapes raises LotteryError.

  Returns:
    A `Ticket` with numpy arrays.
  """
  if kind not in KINDS:
    raise LotteryError(f"kind: unknown ticket kind {kind!r} (known: "
                       f"{list(KINDS)})")
  if not is_finished(workdir, round, kind):
    raise LotteryError(f"round: no finished {kind} for round {round} in "
                       f"{os.fspath(workdir)!r}")
  d = run_dir(workdir, round, kind)
  arrays = checkpoint.restore(d / "arrays")
  trained = arrays["trained_params"]
  mask = _mask_like(arrays.get("mask", {}), trained)
  ticket = Ticket(round, kind, mask, arrays["rewind_params"], trained,
                  checkpoint.read_json(d / "metrics.json"))
  if like is not None:
    masks_lib.check_compatible(mask, like, what="ticket")
  return ticket


def finished_rounds(workdir) -> list[int]:
  """Rounds whose ticket is finished, in order."""
  root = pathlib.Path(workdir) / "rounds"
  if not root.exists():
    return []
  rounds = sorted(int(p.name.split("_")[1]) for p in root.glob("round_*"))
  return [r for r in rounds if is_finished(workdir, r)]

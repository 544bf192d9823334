"""Exported networks: a pruned network as a plain, smaller one on disk.

`export` shrinks a masked network (`lottery.shrink`) and writes it where no
mask is needed to run it:

  <directory>/arrays/             orbax (`lottery.checkpoint`, verified):
                                  {'params': ..., 'model_state': ...}
  <directory>/architecture.json   written last: {'format', 'model' (its
                                  registered name), 'options', 'num_classes',
                                  'widths' (one per unit set of the model's
                                  coupling; null: the registry's own),
                                  'source' (where it came from)}

`load_exported(directory)` rebuilds the model from the registry
(`lottery.models.get(model, num_classes, **options).with_widths(widths)`,
`lottery.shrink.narrowed` as `shrink` returns it) and restores the arrays:
`model.apply({'params': params, **model_state}, x)` computes what the
masked network computed, up to float rounding, with no mask anywhere (jit
it: a conv network's narrow convolutions are fast in a compiled program).
`export_ticket(workdir, directory, round=3)` exports a ticket of a run in
one call.

A model `shrink` cannot rebuild (no `coupling()` or `with_widths()`) is
exported at full size with its pruned weights zero (widths null).
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import numpy as np
from flax import traverse_util

from lottery import checkpoint
from lottery import masks as masks_lib
from lottery import models
from lottery import runs
from lottery import structure as structure_lib
from lottery import tickets
from lottery.errors import LotteryError
from lottery.errors import refield
from lottery.shrink import narrowed
from lottery.shrink import shrink

__all__ = ["ARCHITECTURE", "export", "export_ticket", "load_exported"]

ARCHITECTURE = "architecture.json"
ARRAYS = "arrays"
FORMAT = "lottery-export-1"
_KEYS = ("format", "model", "options", "num_classes", "widths", "source")


@checkpoint.register_remedy
def _export_remedy(path: pathlib.Path) -> str | None:
  """An export is written once: a damaged one is written again elsewhere."""
  if path.name == ARCHITECTURE or (
      path.name == ARRAYS and (path.parent / ARCHITECTURE).exists()):
    return (f"export the network again into a new directory (this one, "
            f"{os.fspath(path.parent)!r}, cannot be trusted)")
  return None


def _flat(tree: Any) -> dict[str, Any]:
  return traverse_util.flatten_dict(dict(tree), sep="/")


def widths_of(model: nn.Module, params: Any) -> list[int] | None:
  """Per unit set of `model`'s coupling, its width in `params`, in units as
  `with_widths` takes them (its first producer's kernel's last axis over
  the unit's block: heads, not their columns); None for a model without a
  coupling."""
  coupling = structure_lib.coupling_of(model)
  if coupling is None:
    return None
  flat = _flat(params)
  return [int(np.shape(flat[f"{u.producers[0]}/kernel"])[-1]) // u.block
          for u in coupling]


def export(directory: str | os.PathLike, params: Any, model_state: Any,
           mask: Any, *, model: str, num_classes: int,
           options: dict[str, Any] | None = None,
           source: dict[str, Any] | None = None) -> dict:
  """Writes the network `apply_mask(mask, params)` of the registered model
  `model`, shrunk, to `directory` (see the module doc).

  Args:
    directory: a new or empty directory; never overwritten.
    params, model_state: the full-size network's weights and other
      collections (e.g. {'batch_stats': ...}; {} for none).
    mask: a mask of `params` (None leaves: not prunable); None: all kept.
    model: its registered name (`lottery.models.names()`).
    num_classes: its output size.
    options: its factory's options (e.g. {'width': 4}); None: none.
    source: JSON-able facts kept in architecture.json (e.g. the ticket's
      coordinates).

  Returns:
    The architecture written (architecture.json's content).

  Raises:
    LotteryError: one line, before anything is written: a directory that
      holds something, an unknown model or option, params that are not the
      model's or a mask that does not fit them.
  """
  path = pathlib.Path(directory)
  if path.exists() and (not path.is_dir() or any(path.iterdir())):
    raise LotteryError(f"directory: {os.fspath(path)!r} already holds "
                       f"something; export writes only into a new or empty "
                       f"directory")
  options = dict(options or {})
  net = models.get(model, num_classes, field="model", **options)
  _check_params(net, params, model, num_classes)
  if mask is None:
    mask = masks_lib.make_mask(params)  # All kept.
  if structure_lib.coupling_of(net) is not None and hasattr(net,
                                                            "with_widths"):
    net, params, model_state = shrink(net, params, model_state, mask)
    widths = widths_of(net, params)
  else:
    masks_lib.check_compatible(mask, params, what="mask")
    params, widths = masks_lib.apply_mask(mask, params), None
  arch = {"format": FORMAT, "model": model, "options": options,
          "num_classes": int(num_classes), "widths": widths,
          "source": dict(source or {})}
  path.mkdir(parents=True, exist_ok=True)
  checkpoint.save(path / ARRAYS, tickets.drop_none(
      {"params": params, "model_state": dict(model_state)}))
  checkpoint.write_json(path / ARCHITECTURE, arch)
  checkpoint.wait_for(path / ARCHITECTURE)
  return checkpoint.read_json(path / ARCHITECTURE)


def _check_params(net: nn.Module, params: Any, model: str,
                  num_classes: int) -> None:
  """Refuses params without the model's output layer of `num_classes`
  units or without a kernel its coupling names."""
  flat = _flat(params)
  needed = ["out/kernel"] + [f"{m}/kernel" for u in
                             structure_lib.coupling_of(net) or ()
                             for m in u.producers + u.consumers]
  missing = [k for k in needed if k not in flat]
  if missing:
    raise LotteryError(f"params: not those of model {model!r} (no "
                       f"{missing[0]!r}; they hold {sorted(flat)[:8]})")
  outputs = np.shape(flat["out/kernel"])[-1]
  if outputs != num_classes:
    raise LotteryError(f"num_classes: {num_classes}, but the params' output "
                       f"layer 'out' has {outputs} units")


def _exported(read: Callable[[pathlib.Path], Any], path: pathlib.Path) -> Any:
  """`read(path)` of an export's file; the error for a damaged one names
  the export's `directory`, not a workdir."""
  try:
    return read(path)
  except LotteryError as e:
    if not str(e).startswith("workdir: "):
      raise
    raise refield(e, "directory") from None


def load_exported(directory: str | os.PathLike
                  ) -> tuple[nn.Module, Any, dict]:
  """The network `export` wrote to `directory`.

  Returns:
    (model, params, model_state): the model rebuilt from the registry at
    the exported widths and its arrays (numpy); run it with
    `model.apply({'params': params, **model_state}, x)`.

  Raises:
    LotteryError: one line: no export in `directory`, a damaged or edited
      architecture.json or arrays, an architecture that the arrays do not
      have (widths, classes), or a model this installation does not know.
  """
  path = pathlib.Path(directory)
  file = path / ARCHITECTURE
  if not file.is_file():
    raise LotteryError(f"directory: {os.fspath(path)!r} holds no exported "
                       f"network ({ARCHITECTURE} missing)")
  arch = _exported(checkpoint.read_json, file)
  where = f"directory: {os.fspath(file)!r}"
  if not isinstance(arch, dict) or arch.get("format") != FORMAT or set(
      arch) != set(_KEYS):
    keys = sorted(arch) if isinstance(arch, dict) else arch
    raise LotteryError(f"{where} is not an export of format {FORMAT!r} "
                       f"(keys {keys!r})")
  net = models.get(arch["model"], arch["num_classes"], field=f"{where}: model",
                   **arch["options"])
  arrays = _exported(checkpoint.restore, path / ARRAYS)
  params, model_state = arrays["params"], arrays.get("model_state", {})
  if arch["widths"] is not None:
    if not hasattr(net, "with_widths"):
      raise LotteryError(f"{where}: model {arch['model']!r} cannot rebuild "
                         f"itself with widths {arch['widths']}")
    net = narrowed(net.with_widths(arch["widths"]))
  flat = _flat(params)
  outputs = np.shape(flat.get("out/kernel", ()))[-1:]
  try:
    held = None if arch["widths"] is None else widths_of(net, params)
  except KeyError as e:
    held = f"no {e}"
  if held != arch["widths"] or outputs != (arch["num_classes"],):
    raise LotteryError(
        f"{where} describes widths {arch['widths']} and "
        f"{arch['num_classes']} classes, the arrays beside it hold "
        f"{held} and {outputs[0] if outputs else 'no out/kernel'}; "
        f"export the network again into a new directory")
  return net, params, model_state


def export_ticket(workdir: str | os.PathLike, directory: str | os.PathLike,
                  round: int | None = None,  # pylint: disable=redefined-builtin
                  kind: str | None = None, *, weights: str = "trained",
                  **coords) -> dict:
  """Exports a ticket of the run in `workdir` (`lottery.load_ticket`'s
  coordinates: `export_ticket(wd, out, 3)` is IMP round 3's ticket) with
  the run's model (its config.json) to `directory`.

  Args:
    weights: 'trained' (the ticket's trained weights and model state) or
      'rewind' (those it started from).

  Returns:
    The architecture written; its 'source' holds the workdir, the ticket's
    coordinates, `weights`, its density and test accuracy.
  """
  # Imported here: lottery.experiment builds runs (data, loop), which a
  # load of an export does not need.
  from lottery.experiment import model_options  # pylint: disable=g-import-not-at-top
  if weights not in ("trained", "rewind"):
    raise LotteryError(f"weights: must be 'trained' or 'rewind' (got "
                       f"{weights!r})")
  config = runs.load_config(workdir)
  ticket = tickets.load_ticket(workdir, round, kind, **coords)
  params, state = ((ticket.trained_params, ticket.model_state)
                   if weights == "trained" else
                   (ticket.rewind_params, ticket.rewind_model_state))
  out = _flat(params).get("out/kernel")
  if out is None:
    raise LotteryError(f"workdir: the ticket's model {config.model.name!r} "
                       f"has no output layer 'out' to count its classes")
  source = {"workdir": os.path.abspath(workdir), "coords": ticket.coords,
            "weights": weights,
            **{k: ticket.metrics[k] for k in ("density", "test_accuracy")
               if k in ticket.metrics}}
  return export(directory, params, state, ticket.mask,
                model=config.model.name, num_classes=np.shape(out)[-1],
                options=model_options(config), source=source)

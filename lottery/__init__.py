"""lottery: lottery-ticket experiments in JAX/Flax.

Masks are plain pytrees threaded as arguments through jit-compiled train
steps; iterative magnitude pruning, rewinding and the controls are built on
that one mechanism.
"""

from lottery.config import base_config
from lottery.errors import LotteryError
from importlib import metadata as _metadata

from lottery import distributions
from lottery import driver
from lottery import imp
from lottery import method
from lottery import pai
from lottery import scores
from lottery import sparse
from lottery import stability
from lottery import structure
from lottery.experiment import build
from lottery.export import export_ticket
from lottery.export import load_exported
from lottery.imp import run
from lottery.imp import summary
from lottery.masks import apply_mask
from lottery.masks import density
from lottery.masks import layer_densities
from lottery.masks import make_mask
from lottery.pruning import keep_top
from lottery.pruning import prune
from lottery.pruning import random_like
from lottery.runs import load_config
from lottery.shrink import shrink
from lottery.step import TrainState
from lottery.step import init_state
from lottery.step import keep_pruned
from lottery.step import make_eval_step
from lottery.step import make_train_step
from lottery.tickets import Ticket
from lottery.tickets import finished_rounds
from lottery.tickets import load_ticket
from lottery.tickets import records

# Submodules imported on first use: `lottery.report` draws with matplotlib,
# an optional dependency, and `lottery.analysis` reads runs for notebooks.
_ON_USE = ("analysis", "report")


def __getattr__(name: str):
  if name in _ON_USE:
    import importlib  # pylint: disable=g-import-not-at-top
    try:
      return importlib.import_module(f"lottery.{name}")
    except ImportError as e:  # So that hasattr(lottery, 'report') is False.
      raise AttributeError(f"lottery.{name} needs {e.name}: pip install -e "
                           f"'.[report]'") from e
  raise AttributeError(f"module 'lottery' has no attribute {name!r}")


try:
  __version__ = _metadata.version("lottery")
except _metadata.PackageNotFoundError:
  __version__ = "0+unknown"

# `lottery.run` and `lottery.build` are IMP's (`lottery.imp.run`); kept as
# aliases of the first method.
__all__ = [
    "LotteryError", "Ticket", "TrainState", "analysis", "apply_mask",
    "base_config",
    "__version__", "build", "density", "distributions", "driver",
    "export_ticket", "finished_rounds", "imp", "init_state", "method",
    "scores", "keep_pruned", "keep_top", "layer_densities", "load_config",
    "load_exported", "load_ticket",
    "make_eval_step", "make_mask", "make_train_step", "pai", "prune",
    "random_like", "records", "run", "shrink", "sparse", "stability",
    "structure", "summary",
]

"""lottery: lottery-ticket experiments in JAX/Flax.

Masks are plain pytrees threaded as arguments through jit-compiled train
steps; iterative magnitude pruning, rewinding and the controls are built on
that one mechanism.
"""

from lottery.config import base_config
from lottery.errors import LotteryError
from lottery import imp
from lottery.experiment import build
from lottery.imp import run
from lottery.imp import summary
from lottery.masks import apply_mask
from lottery.masks import density
from lottery.masks import layer_densities
from lottery.masks import make_mask
from lottery.pruning import prune
from lottery.step import TrainState
from lottery.step import init_state
from lottery.step import keep_pruned
from lottery.step import make_eval_step
from lottery.step import make_train_step
from lottery.tickets import Ticket
from lottery.tickets import finished_rounds
from lottery.tickets import load_ticket
from lottery.tickets import records

# `lottery.run` and `lottery.build` are IMP's (`lottery.imp.run`); kept as
# aliases of the first method.
__all__ = [
    "LotteryError", "Ticket", "TrainState", "apply_mask", "base_config",
    "build", "density", "finished_rounds", "imp", "init_state", "keep_pruned",
    "layer_densities", "load_ticket", "make_eval_step", "make_mask",
    "make_train_step", "prune", "records", "run", "summary",
]

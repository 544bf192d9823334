"""lottery: lottery-ticket experiments in JAX/Flax.

Masks are plain pytrees threaded as arguments through jit-compiled train
steps; iterative magnitude pruning, rewinding and the controls are built on
that one mechanism.
"""

from lottery.config import base_config
from lottery.errors import LotteryError
from lottery.imp import build
from lottery.imp import run
from lottery.imp import summary
from lottery.masks import apply_mask
from lottery.masks import density
from lottery.masks import layer_densities
from lottery.masks import make_mask
from lottery.pruning import prune
from lottery.tickets import Ticket
from lottery.tickets import finished_rounds
from lottery.tickets import load_ticket

__all__ = [
    "LotteryError", "Ticket", "apply_mask", "base_config", "build", "density",
    "finished_rounds", "layer_densities", "load_ticket", "make_mask", "prune",
    "run", "summary",
]

r"""Runs an iterative-magnitude-pruning experiment.

  python -m experiments.imp --workdir=/tmp/lottery/mnist1d
  python -m experiments.imp --config=configs/lenet_mnist.py \
      --workdir=... --config.pruning.fraction=0.2 --config.pruning.rounds=5

Running the same command on the same workdir resumes an interrupted run.
"""

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

import lottery

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/mnist1d.py", "Config file (path[:arg]).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for the run.",
                               required=True)
_LOG_STEPS = flags.DEFINE_bool("log_steps", False,
                               "Log test metrics at every evaluation.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # Orbax logs every save at INFO, and an import sets absl's verbosity to
  # INFO, so keep to warnings unless asked on the command line.
  if not any(a.startswith(("--verbosity", "-v", "--v=")) for a in sys.argv):
    logging.set_verbosity(logging.WARNING)
  try:
    lottery.run(_CONFIG.value, _WORKDIR.value,
                log=lambda m: print(m, flush=True), log_steps=_LOG_STEPS.value)
  except lottery.LotteryError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)

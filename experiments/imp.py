r"""Runs an iterative-magnitude-pruning experiment.

  python -m experiments.imp --workdir=/tmp/lottery_runs/mnist1d
  python -m experiments.imp --config=mnist1d:quick --workdir=...
  python -m experiments.imp --config=lenet_mnist --workdir=... \
      --config.pruning.fraction=0.2 --config.pruning.rounds=5

Running the same command on the same workdir resumes an interrupted run;
--dry_run shows the resolved config and workdir without running.
"""

# pylint: disable=g-import-not-at-top,wrong-import-position
from experiments import signals  # First: Ctrl-C during the imports.
if __name__ == "__main__":
  signals.install()

from absl import flags

from experiments import cli  # First: it checks which `lottery` is imported.
import lottery
from lottery import config as config_lib

_LOG_STEPS = flags.DEFINE_bool("log_steps", False,
                               "Log test metrics at every evaluation.")


def _run(config, workdir, progress):
  return lottery.imp.run(config, workdir, progress=progress,
                         log_steps=_LOG_STEPS.value)


if __name__ == "__main__":
  cli.main(_run, doc=__doc__, default_config="mnist1d", method="imp",
           validate=config_lib.validate)

r"""Runs an iterative-magnitude-pruning experiment.

  python -m experiments.imp --workdir=/tmp/lottery_runs/mnist1d
  python -m experiments.imp --config=mnist1d:quick --workdir=...
  python -m experiments.imp --config=lenet_mnist --workdir=... \
      --config.pruning.fraction=0.2 --config.pruning.rounds=5

Running the same command on the same workdir resumes an interrupted run;
--dry_run shows the resolved config (and, with --workdir, whether the run there
is new or resumes) without running.
"""

# pylint: disable=g-import-not-at-top,wrong-import-position
from experiments import signals  # First: Ctrl-C during the imports.
if __name__ == "__main__":
  signals.install()

from experiments import cli  # First: it checks which `lottery` is imported.

if __name__ == "__main__":
  cli.launch(__doc__, default_config="mnist1d", method="imp")

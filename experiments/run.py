r"""Runs any recipe: the recipe names its method (`config.method`: imp, pai,
sparse, or any registered plug-in of `lottery.method`).

  python -m experiments.run --workdir=/tmp/lottery_runs/mnist1d
  python -m experiments.run --config=pai_mnist1d:quick --workdir=...
  python -m experiments.run --config=sparse_mnist1d --workdir=... \
      --config.seeds.num=3

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
  cli.launch(__doc__, default_config="mnist1d", method=None)

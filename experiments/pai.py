r"""Runs a pruning-at-initialization experiment (SNIP, GraSP, SynFlow,
magnitude and random at init, with Frankle et al. 2021's sanity checks).

  python -m experiments.pai --workdir=/tmp/lottery_runs/pai
  python -m experiments.pai --config=pai_mnist1d:quick --workdir=...
  python -m experiments.pai --workdir=... --config.pai.methods="('synflow',)" \
      --config.pai.densities="(0.01,)" --config.seeds.num=3

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
  cli.launch(__doc__, default_config="pai_mnist1d", method="pai")

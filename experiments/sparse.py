r"""Runs a sparse-training experiment: static, SET, RigL and GMP masks (and
N:M: 'nm', SR-STE's 'sr_ste') at each density and per-layer distribution,
with a dense baseline.

  python -m experiments.sparse --workdir=/tmp/lottery_runs/sparse
  python -m experiments.sparse --config=sparse_mnist1d:quick --workdir=...
  python -m experiments.sparse --workdir=... \
      --config.sparse.methods="('rigl',)" --config.sparse.densities="(0.05,)"

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
  cli.launch(__doc__, default_config="sparse_mnist1d", method="sparse")

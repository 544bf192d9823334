r"""Runs a sparse-training experiment: static, SET, RigL and GMP masks at each
density and per-layer distribution, with a dense baseline.

  python -m experiments.sparse --workdir=/tmp/lottery_runs/sparse
  python -m experiments.sparse --config=sparse_mnist1d:quick --workdir=...
  python -m experiments.sparse --workdir=... \
      --config.sparse.methods="('rigl',)" --config.sparse.densities="(0.05,)"

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

_LOG_STEPS = flags.DEFINE_bool("log_steps", False,
                               "Log test metrics at every evaluation.")


def _run(config, workdir, progress):
  return lottery.sparse.run(config, workdir, progress=progress,
                            log_steps=_LOG_STEPS.value)


if __name__ == "__main__":
  cli.main(_run, doc=__doc__, default_config="sparse_mnist1d", method="sparse",
           validate=lottery.sparse.check)

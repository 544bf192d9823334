r"""Runs a pruning-at-initialization experiment (SNIP, GraSP, SynFlow,
magnitude and random at init, with Frankle et al. 2021's sanity checks).

  python -m experiments.pai --workdir=/tmp/lottery_runs/pai
  python -m experiments.pai --config=pai_mnist1d:quick --workdir=...
  python -m experiments.pai --workdir=... --config.pai.methods="('synflow',)" \
      --config.pai.densities="(0.01,)" --config.seeds.num=3

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
  return lottery.pai.run(config, workdir, progress=progress,
                         log_steps=_LOG_STEPS.value)


if __name__ == "__main__":
  cli.main(_run, doc=__doc__, default_config="pai_mnist1d", method="pai",
           validate=config_lib.validate)

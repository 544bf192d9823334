r"""Runs any recipe: the recipe names its method (`config.method`: imp, pai,
sparse, or any registered plug-in of `lottery.method`).

  python -m experiments.run --workdir=/tmp/lottery_runs/mnist1d
  python -m experiments.run --config=pai_mnist1d:quick --workdir=...
  python -m experiments.run --config=sparse_mnist1d --workdir=... \
      --config.seeds.num=3

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
  return lottery.driver.run(config, workdir, progress=progress,
                            log_steps=_LOG_STEPS.value)


def _validate(config):
  lottery.driver.method_of(config).check(config)


if __name__ == "__main__":
  cli.main(_run, doc=__doc__, default_config="mnist1d", validate=_validate)

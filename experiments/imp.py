r"""Runs an iterative-magnitude-pruning experiment.

  python -m experiments.imp --workdir=/tmp/lottery/mnist1d
  python -m experiments.imp --config=mnist1d:quick --workdir=...
  python -m experiments.imp --config=lenet_mnist --workdir=... \
      --config.pruning.fraction=0.2 --config.pruning.rounds=5

Running the same command on the same workdir resumes an interrupted run;
--dry_run shows the resolved config and workdir without running.
"""

import re

from absl import flags

from experiments import cli  # First: it checks which `lottery` is imported.
import lottery
from lottery import config as config_lib
from lottery import tickets

_LOG_STEPS = flags.DEFINE_bool("log_steps", False,
                               "Log test metrics at every evaluation.")


def _run(config, workdir, progress):
  # Becomes `lottery.imp.run(config, workdir, progress=progress)`.
  return _run_reporting_through_log(config, workdir, progress)


# Today's lottery.run reports through `log` only; these lines feed its step
# lines to `progress` until lottery.imp.run takes the progress itself.
_STEP_LINE = re.compile(r"^  round_(\d+)/(\w+)(?:: resuming at step|  step) +"
                        r"(\d+)")


def _run_reporting_through_log(config, workdir, progress):
  p, steps = config.pruning, config.training.steps
  with_controls = [r and (r % config.controls_every == 0 or r == p.rounds)
                   for r in range(p.rounds + 1)]
  progress.jobs(
      total=sum(1 + (len(config.controls) if c else 0) for c in with_controls),
      done=sum(tickets.is_finished(workdir, r, k)
               for r in range(p.rounds + 1) for k in tickets.KINDS))
  current = []

  def log(message):
    m = _STEP_LINE.match(message)
    if not m:
      progress.line(message)
      return
    round_, step = int(m[1]), int(m[3])
    name = f"round {round_} {m[2]}"
    if current != [name]:
      current[:] = [name]
      if "resuming" in message:
        progress.job_start(name, step, steps)
        return
      rewound = p.reset == "rewind" and round_
      progress.job_start(name, p.rewind_step if rewound else 0, steps)
    progress.job_step(step)
    if _LOG_STEPS.value:
      progress.line(message)
    if step == steps:
      progress.job_end()
      current.clear()

  return lottery.run(config, workdir, log=log, log_steps=True)


if __name__ == "__main__":
  cli.main(_run, doc=__doc__, default_config="mnist1d",
           validate=config_lib.validate)

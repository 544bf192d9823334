"""The framework's one exception type for user mistakes, and a way to keep
the libraries' own reports of them off the screen."""

import contextlib
import logging
from collections.abc import Iterator


class LotteryError(ValueError):
  """A user mistake: a bad config value, missing data, a mismatched checkpoint.

  The message names the offending field (or "config" for a workdir that holds
  another run) and its value. Entry points print it on one line, without a
  traceback, and exit non-zero.
  """


class Diverged(LotteryError):
  """A training or test loss that became non-finite or diverged (see
  `lottery.loop.DIVERGED`).

  Its message is `what`, then where (the job, when `within` named it; else
  the replicate of a stacked run, when there are several), then `detail`.
  """

  def __init__(self, what: str, detail: str, replicate: int | None = None,
               job: str | None = None):
    self.what, self.detail, self.replicate = what, detail, replicate
    where = (f" in {job}" if job is not None else
             f" (replicate {replicate})" if replicate is not None else "")
    super().__init__(f"{what}{where} {detail}")

  def within(self, job: str) -> "Diverged":
    """The same error, naming the job it happened in."""
    return Diverged(self.what, self.detail, self.replicate, job)


def refield(error: LotteryError, field: str) -> LotteryError:
  """`error`'s message under another field name: 'workdir: X' -> 'FIELD: X'
  (a check reused for a value that is not the field it names)."""
  return LotteryError(f"{field}: {str(error).partition(': ')[2]}")


@contextlib.contextmanager
def quiet_logs(log_filter: logging.Filter, logger: str = "absl"
               ) -> Iterator[None]:
  """Drops the records `log_filter` rejects from `logger` in the block (TFDS
  and orbax log through absl's logger: their reports of what a LotteryError
  then says in one line)."""
  log = logging.getLogger(logger)
  log.addFilter(log_filter)
  try:
    yield
  finally:
    log.removeFilter(log_filter)

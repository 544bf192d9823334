"""The framework's one exception type for user mistakes."""


class LotteryError(ValueError):
  """A user mistake: a bad config value, missing data, a mismatched checkpoint.

  The message names the offending field (or "config" for a workdir that holds
  another run) and its value. Entry points print it on one line, without a
  traceback, and exit non-zero.
  """

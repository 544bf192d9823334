"""Timing helpers of the benchmark scripts (no flags: importable anywhere)."""

import statistics


def median_times(timed, variants, repeats: int) -> dict:
  """The median of `repeats` calls of `timed(v)` per variant, after one
  call each to compile and warm up; the variants alternate, so that a
  slower stretch of a shared machine falls on all of them."""
  for v in variants:
    timed(v)
  times = {v: [] for v in variants}
  for _ in range(repeats):
    for v in variants:
      times[v].append(timed(v))
  return {v: statistics.median(ts) for v, ts in times.items()}

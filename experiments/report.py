r"""Writes the report of one or more runs: one self-contained HTML page.

  python -m experiments.report WORKDIR [WORKDIR ...] --out=DIR

DIR/index.html opens offline (figures inline); DIR/figures/ holds every
figure as PNG and SVG and the numbers it plots as JSON; DIR/report.json the
runs' configs, data fingerprints, software versions and machine. Per run,
the figures of its method (lottery.report); with several workdirs, also
their accuracy against density on one figure. A run in flight is reported
as far as it is finished. Needs matplotlib: pip install -e '.[report]'.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

from experiments import cli  # First: it checks which `lottery` is imported.
from lottery.errors import LotteryError


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
      prog="python -m experiments.report", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("workdirs", nargs="+", metavar="WORKDIR",
                      help="a run's --workdir")
  parser.add_argument("--out", required=True, metavar="DIR",
                      help="a new or empty directory, or a previous report's "
                      "(replaced whole)")
  args = parser.parse_args(argv)
  if importlib.util.find_spec("matplotlib") is None:
    cli.fail("report: matplotlib is not installed; pip install -e "
             "'.[report]'")
  os.environ.setdefault("MPLBACKEND", "Agg")
  try:
    from lottery import report  # pylint: disable=g-import-not-at-top
    for wd in args.workdirs:  # All refused before anything is written.
      report.check_workdir(wd)
    figures = report.write_report(args.workdirs, args.out)
  except LotteryError as e:
    cli.fail(str(e))
  except KeyboardInterrupt:
    print(f"error: interrupted; {args.out!r} is as it was (rerun the same "
          f"command)", file=sys.stderr, flush=True)
    sys.exit(130)
  print(f"{len(figures)} figures; report: "
        f"{os.path.join(args.out, 'index.html')}", file=sys.stderr)


if __name__ == "__main__":
  main()

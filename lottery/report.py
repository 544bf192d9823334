"""A run's report: the figures of its workdir, one function per figure, and
one self-contained HTML page of them (`write_report`).

Each figure function takes workdirs (and optionally their records, as
`lottery.records` lists them) and returns `(figure, data)`: a matplotlib
`Figure` (built without pyplot, so it works under any backend and leaves no
global state) and the numbers it plots as a JSON-able dict; None when the
run has nothing to plot yet. The notebooks call the same functions, so a
figure is drawn in one place.

  accuracy_vs_density(workdirs)  test accuracy against density (log axis),
                                 mean ± std bands over replicates, per series
                                 (IMP: ticket and each control; PaI: each
                                 method and check; sparse: each method and
                                 distribution), the dense baseline as a band;
                                 several workdirs: their main series on one
                                 axis, labelled by method and recipe
  layer_densities(workdir)       the density of every prunable layer
  mask_overlap(workdir)          Jaccard overlap of the replicates' masks,
                                 and (IMP) of consecutive rounds' masks
  learning_curves(workdir)       test accuracy during training
  barrier(workdir)               stability: error barrier against k
  imp_barriers(workdir)          IMP: instability and level barriers against
                                 density
  interpolation(workdir)         stability: error along the linear paths
  mask_change(workdir)           sparse training: mask change over time

Everything works on a run in flight: only finished tickets are read, and
of a group of replicates only when all are saved (`whole_groups`).
matplotlib is an optional dependency (`pip install -e '.[report]'`).
"""

from __future__ import annotations

import base64
import dataclasses
import html
import importlib.metadata
import io
import json
import math
import os
import pathlib
import platform
import re
import shutil
import zlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from lottery import analysis
from lottery import checkpoint
from lottery import driver
from lottery import runs
from lottery import tickets
from lottery import workdir as workdir_lib
from lottery.errors import LotteryError

__all__ = ["Figure", "accuracy_vs_density", "barrier", "check_out",
           "check_workdir",
           "environment", "imp_barriers", "interpolation", "layer_densities",
           "learning_curves", "mask_change", "mask_overlap", "recipe",
           "series", "write_report"]

PathLike = str | os.PathLike
Plot = tuple[Any, dict] | None

_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple",
           "tab:brown", "tab:pink", "tab:olive", "tab:cyan")
# Past those nine, the light shades of the same hues (matplotlib's tab20),
# before any colour repeats in another line style.
_LIGHT = ("#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94",
          "#f7b6d2", "#dbdb8d", "#9edae5")
_PALETTE = _COLORS + _LIGHT
# The built-in series names' colours: a family's names appear together, so
# each family takes distinct places of the palette.
_NAMED_COLORS = {name: _COLORS[i] for family in (
    ("ticket", "reinit", "random_prune", "shuffle", "scratch"),
    ("magnitude", "random", "snip", "grasp", "synflow"),
    ("static", "set", "rigl", "gmp", "nm", "sr_ste"))
                 for i, name in enumerate(family)}


_LINESTYLES = ("-", "--", "-.", ":")


def _styles(keys: Iterable[str], word: Callable[[str], str] = lambda k: k
            ) -> dict[str, dict[str, str]]:
  """One figure's line styles, {series key: {'color', 'ls'}}.

  A series' name is the first word of `word(key)` (its method or control).
  'dense' is gray. The built-in names take their fixed colours first, any
  other name one chosen by its checksum; a colour another name of the figure
  holds passes to the next free one (past the palette's nine, their light
  shades; past those, colours repeat in another line style). So a method has
  the same colour in every figure of a run, and a method's several series in
  one figure (one per distribution) share its colour, each in a line style
  of its own.
  """
  keys = list(dict.fromkeys(keys))
  name = {k: (word(k).split() or [""])[0] for k in keys}
  names = sorted(dict.fromkeys(n for n in name.values() if n != "dense"),
                 key=lambda n: n not in _NAMED_COLORS)
  slots, taken = {}, set()
  size = len(_PALETTE) * len(_LINESTYLES)
  for n in names:
    start = (_COLORS.index(_NAMED_COLORS[n]) if n in _NAMED_COLORS else
             zlib.crc32(n.encode()) % len(_COLORS))
    slot = next((start + j) % size for j in range(size)
                if (start + j) % size not in taken)
    slots[n] = slot
    taken.add(slot)
  out: dict[str, dict[str, str]] = {}
  seen: dict[str, int] = {}
  for k in keys:
    n = name[k]
    i = seen[n] = seen.get(n, -1) + 1
    if n == "dense":
      out[k] = {"color": "gray", "ls": _LINESTYLES[(3 + i) % 4]}
    else:
      out[k] = {"color": _PALETTE[slots[n] % len(_PALETTE)],
                "ls": _LINESTYLES[(slots[n] // len(_PALETTE) + i) % 4]}
  return out


@dataclasses.dataclass
class Figure:
  """A figure of the report: its file name (without extension), title,
  caption, section (a workdir's name, or 'comparison'), the matplotlib
  figure and the numbers it plots."""
  name: str
  title: str
  caption: str
  section: str
  figure: Any
  data: dict


def check_workdir(workdir: PathLike) -> str:
  """The method of the run in `workdir`.

  Raises:
    LotteryError: ('workdir: ...', one line) if `workdir` is not a
      directory or holds no run (no config.json; `lottery.runs.run_dir`).
  """
  return driver.workdir_method(runs.run_dir(workdir))


_REPORT_FILE = "report.json"


def check_out(out: PathLike, workdirs: Sequence[PathLike] = ()) -> None:
  """Checks that a report may be written to `out`: a new or empty directory,
  or a previous report's (index.html, report.json and figures/ only), which
  the new one replaces whole. A symbolic link is followed.

  Raises:
    LotteryError: ('out: ...', one line) if `out` is a file, a lottery
      workdir, inside one, holds one of `workdirs`, or holds anything but a
      report.
  """
  name = os.fspath(out)
  path = _out_path(out)
  if path.exists() and not path.is_dir():
    raise LotteryError(f"out: {name!r} is a file, not a directory")
  above = next((p for p in path.parents if p.exists()), None)
  if above is not None and not above.is_dir():
    raise LotteryError(f"out: {name!r} cannot be created: {os.fspath(above)!r} "
                       f"is a file")
  if (path / workdir_lib.CONFIG_FILE).exists() or any(
      path == w or path in w.parents
      for w in (pathlib.Path(w).resolve() for w in workdirs)):
    raise LotteryError(f"out: {name!r} is or holds a lottery workdir; write "
                       f"the report to a directory of its own")
  inside = next((p for p in path.parents if workdir_lib.holds_run(p)), None)
  if inside is not None:
    raise LotteryError(f"out: {name!r} is inside the lottery workdir "
                       f"{os.fspath(inside)!r}; write the report to a "
                       f"directory of its own")
  if path.is_dir() and any(path.iterdir()) and not _is_report(path):
    raise LotteryError(f"out: {name!r} holds files that are not a report "
                       f"(a report holds only index.html, {_REPORT_FILE} and "
                       f"figures/); give a new or empty directory, or a "
                       f"previous report's")


def _out_path(out: PathLike) -> pathlib.Path:
  """`out` absolute, its links followed: the directory the report takes."""
  return pathlib.Path(os.path.realpath(out))


def _is_report(path: pathlib.Path) -> bool:
  """Whether the directory `path` holds a report of `write_report` only."""
  if {p.name for p in path.iterdir()} - {"index.html", _REPORT_FILE,
                                          "figures"}:
    return False
  try:
    meta = json.loads((path / _REPORT_FILE).read_text())
  except (OSError, ValueError):
    return False
  return isinstance(meta, dict) and {"runs", "environment",
                                     "figures"} <= set(meta)


def _figure(width=7.0, height=4.5, ncols=1, nrows=1, **kw):
  """A pyplot-free figure and its axes (a flat list)."""
  from matplotlib.figure import Figure as MplFigure  # pylint: disable=g-import-not-at-top
  fig = MplFigure(figsize=(width, height), layout="constrained")
  axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
  return fig, [ax for row in axes for ax in row]


# IMP's copies of its tickets on another data order (`pruning.stability_
# every`): only the barrier figure shows them.
_COPY = "stability_copy"


def _records(workdir: PathLike, records: Iterable[dict] | None, *,
             copies: bool = False) -> list[dict]:
  recs = lottery_records(workdir) if records is None else list(records)
  return [r for r in analysis.replicates(recs)
          if copies or r.get("kind") != _COPY]


def lottery_records(workdir: PathLike) -> list[dict]:
  """`lottery.records(workdir)` ([] for a run with nothing finished), less
  the tickets of groups whose replicates a run in flight has not all saved
  (`whole_groups`).

  Raises:
    LotteryError: (one line, naming the file and what to do) if one of the
      run's record files is damaged: a report must not pass a damaged run
      off as an unfinished one.
  """
  return whole_groups(workdir, tickets.records(workdir))[0]


# A replicate's component of a ticket directory (`tickets.replica_path`).
_SEED_DIR = re.compile(r"(^|/)seed_\d+(?=/|$)")


def whole_groups(workdir: PathLike, records: list[dict]
                 ) -> tuple[list[dict], int]:
  """(`records` less those of unfinished groups, how many were left out).

  A run of several replicates (`seeds.num`) trains a group's replicates
  together but saves their tickets one after another, so a run in flight
  (or stopped) may hold some of a group's: their mean would stand for the
  group. Groups are the ticket directories but their `seed_<i>` part. A
  finished run's records are returned whole.
  """
  num = runs.load_config(workdir).get("seeds", {}).get("num", 1)
  if num <= 1 or _summary(workdir).get("finished", False):
    return list(records), 0
  count: dict[str, set] = {}
  group = lambda r: _SEED_DIR.sub(r"\1seed_*", str(r.get("ticket")))
  reps = analysis.replicates(records)
  for r in reps:
    count.setdefault(group(r), set()).add(r.get("seed"))
  whole = {g for g, seeds in count.items() if len(seeds) >= num}
  kept = [r for r in records if group(r) in whole]
  return kept, sum(1 for r in reps if group(r) not in whole)


def _summary(workdir: PathLike) -> dict:
  """The run's summary.json; {} before its first record (a damaged one
  raises, as `lottery_records`)."""
  if not checkpoint.exists(pathlib.Path(workdir) / tickets.SUMMARY):
    return {}
  return tickets.summary(workdir)


def recipe(workdir: PathLike) -> str:
  """A short label of a run's recipe: model, data, steps and the method's
  main settings."""
  c = runs.load_config(workdir)
  m = c.get("method") or driver.workdir_method(workdir)
  parts = [f"{c.model.name} on {c.data.name}", f"{c.training.steps} steps"]
  if m == "imp":
    p = c.pruning
    reset = p.reset + (f" k={p.rewind_step}" if p.reset == "rewind" else "")
    parts.append(f"{p.scope} {p.fraction:g}/round, {reset}")
    if p.get("score", "magnitude") != "magnitude":
      parts.append(f"score {p.score}")
    parts += _structure(p)
  elif m == "pai":
    parts += [f"{c.pai.scope}", *_structure(c.pai)]
  elif m == "sparse":
    s = c.sparse
    # ΔT for the methods that read it; N:M and SR-STE's decay where run.
    if set(s.methods) - {"static", "sr_ste"}:
      parts.append(f"ΔT={s.update_every}")
    if {"nm", "sr_ste"} & set(s.methods):
      parts.append(f"N:M {s.n_m}")
    if "sr_ste" in s.methods:
      parts.append(f"λ_W={s.sr_ste_decay:g}")
  return ", ".join(parts)


def _structure(block) -> list[str]:
  """The words of a block's structure and group score, where not the
  defaults."""
  out = []
  if block.get("structure", "unstructured") != "unstructured":
    out.append(f"{block.structure} structure")
    if block.get("group_score", "sum") != "sum":
      out.append(f"group score {block.group_score}")
  return out


def _name(workdir: PathLike) -> str:
  return pathlib.Path(workdir).resolve().name


# The page's own sections: no run is named so.
_RESERVED = ("comparison", "environment")


def _names(workdirs: Sequence[PathLike]) -> list[str]:
  """Each run's name in the report (its folder's, as a file name takes it),
  with the first free '_2', '_3', ... where a name is taken (runs in folders
  of one name; the page's own sections)."""
  taken, out = set(_RESERVED), []
  for wd in workdirs:
    base = _slug(_name(wd))
    n, i = base, 1
    while n in taken:
      i += 1
      n = f"{base}_{i}"
    taken.add(n)
    out.append(n)
  return out


# --- accuracy against density ---------------------------------------------

# The methods whose figures the report knows; a plug-in method's records are
# grouped by its tickets' coordinates (`_plugin_groups`).
BUILT_IN = ("imp", "pai", "sparse", "stability")


def _plugin_groups(workdir: PathLike, recs: list[dict]
                   ) -> list[tuple[tuple[str, ...], list[dict]]]:
  """A plug-in method's records by the coordinates of their tickets (from
  their metrics.json, the seed left out), in order of first appearance:
  [(coordinate names, records)]."""
  groups: dict[tuple[str, ...], list[dict]] = {}
  for r in recs:
    coords = analysis.ticket_metrics(workdir, r).get("coords", {})
    groups.setdefault(tuple(k for k in coords if k != "seed"), []).append(r)
  return list(groups.items())


def _plugin_label(r: dict, names: Sequence[str], method: str) -> str:
  """A plug-in group's label: its coordinates (of `names`) that are not
  numbers ('stage=pruned'; the method's name when there are none), then
  those that are, in parentheses. A group with a coordinate 'dense' is
  'dense' (the run's dense baseline, gray). A series' first word, which keys
  its colour, is so the same in every figure."""
  words = [f"{k}={r[k]}" for k in names
           if r[k] is not None and not _is_number(r[k])]
  if any(r[k] == "dense" for k in names):
    words = ["dense"]
  numbers = ", ".join(f"{k}={r[k]}" for k in names if _is_number(r[k]))
  return (", ".join(words) or method) + (f" ({numbers})" if numbers else "")


def _is_number(v: Any) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def series(workdir: PathLike, records: Iterable[dict] | None = None, *,
           main: bool = False) -> dict:
  """A run's accuracy-against-density series.

  Args:
    workdir: the run's workdir.
    records: its records (default: `lottery.records(workdir)`).
    main: only the method's own series (IMP: the ticket; PaI: each method
      without its checks), for comparisons across runs.

  Returns:
    {'method', 'series': [{'label', 'points': [{'density', 'mean', 'std',
    'n'}, ...] by decreasing density}], 'dense': {'mean', 'std', 'n'} or
    None}; means and stds over replicates (`analysis.table`; a stability
    run's over both copies of each seed, n counting copies).
  """
  method = driver.workdir_method(workdir)
  recs = _records(workdir, records)
  panel = lambda r: ""
  if method == "imp":
    by, key = ("round", "kind"), lambda r: r["kind"]
    rows = analysis.table(recs, "test_accuracy", by=by)
    dense = [r for r in rows if r["round"] == 0 and r["kind"] == "ticket"]
    rows = [r for r in rows if not (main and r["kind"] != "ticket")]
  elif method == "stability":
    recs = [r for r in recs if r.get("source") not in (None, "parent")]
    by, key = ("source", "k"), lambda r: f"k={r['k']}"
    rows = analysis.table(recs, "test_accuracy", by=by)
    dense = []
  elif method not in BUILT_IN:
    # A series per value of the coordinates that are not numbers (a stage,
    # a schedule), a point per group of replicates.
    rows = []
    for names, rs in _plugin_groups(workdir, recs):
      found = analysis.table(rs, "test_accuracy", by=names)
      kinds = [k for k in names if not all(_is_number(r[k]) for r in found)]
      rows += [{**r, "series": _plugin_label(r, kinds, method)}
               for r in found]
    key = lambda r: r["series"]
    dense = [r for r in rows if r["series"] == "dense"]
    if len(dense) == 1:  # The baseline; several dense groups stay series.
      rows.remove(dense[0])
    else:
      dense = []
  else:
    extra = "check" if method == "pai" else "distribution"
    by = ("method", extra, "target_density")
    recs = [r for r in recs if all(k in r for k in by)]
    rows = analysis.table(recs, "test_accuracy", by=by)
    dense = [r for r in rows if r["method"] == "dense"]
    rows = [r for r in rows if r["method"] != "dense"
            and not (main and method == "pai" and r["check"] is not None)]

    if main:
      key = lambda r: r["method"] + (f" ({r['distribution']})"
                                     if method == "sparse" else "")
    else:
      key = lambda r: r["method"]
      panel = ((lambda r: f"check: {r['check']}" if r["check"] else
                "the methods") if method == "pai" else
               (lambda r: f"distribution: {r['distribution']}"))
  out: dict[tuple, list] = {}
  for r in rows:
    out.setdefault((panel(r), key(r)), []).append(
        {"density": r["density"], "mean": r["mean"], "std": r["std"],
         "n": r["n"]})
  base = None
  if dense:
    base = {"mean": dense[0]["mean"], "std": dense[0]["std"],
            "n": dense[0]["n"]}
  return {"method": method,
          "series": [{"panel": p, "label": k,
                      "points": sorted(v, key=lambda q: -q["density"])}
                     for (p, k), v in out.items()],
          "dense": base}


def _density_axis(ax, densities: Sequence[float]) -> None:
  """Log density axis, decreasing to the right, ticks at the densities."""
  ax.set_xscale("log")
  ticks = sorted({float(f"{d:.3g}") for d in densities if d > 0},
                 reverse=True)
  kept = []
  # At least 0.15 decades apart, so labels do not overlap; rounder first.
  for t in sorted(ticks, key=lambda t: (len(f"{t:g}"), -t)):
    if all(abs(math.log10(k / t)) >= 0.15 for k in kept):
      kept.append(t)
  ticks = sorted(kept, reverse=True)
  if ticks:
    ax.set_xticks(ticks, [f"{d:.3g}" for d in ticks])
    ax.minorticks_off()
  if not ax.xaxis_inverted():
    ax.invert_xaxis()
  ax.set_xlabel("density (fraction of prunable weights kept, log scale)")


def _label_and_legend(axes, ylabel: str) -> None:
  """The y label on the first panel, the legend right of the last."""
  axes[0].set_ylabel(ylabel)
  _legend_right(axes[-1])


# Legend entries in one column right of a panel before it takes another
# (a 4-inch-high panel holds about 18 at the small font).
_LEGEND_ROWS = 18


def _legend_right(ax) -> None:
  """The panel's legend right of it, in as many columns as it needs."""
  n = len(ax.get_legend_handles_labels()[1])
  ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5),
            ncols=max(1, -(-n // _LEGEND_ROWS)))


def _round_ticks(ax, rounds: Sequence[int]) -> None:
  """A tick at every round up to 12 of them, else integer ticks that fit."""
  from matplotlib.ticker import MaxNLocator  # pylint: disable=g-import-not-at-top
  if len(rounds) <= 12:
    ax.set_xticks(list(rounds))
  else:
    ax.xaxis.set_major_locator(MaxNLocator(nbins=12, integer=True))


def _band(ax, x, mean, std, **kw):
  """A line with its mean ± std band; returns the line."""
  line, = ax.plot(x, mean, **kw)
  m, s = np.asarray(mean, float), np.asarray(std, float)
  if len(m) == 1 and s[0] > 0:  # A band needs two points: an error bar.
    ax.errorbar(x, m, yerr=s, fmt="none", ecolor=line.get_color(),
                capsize=3)
  elif np.any(s > 0):
    ax.fill_between(x, m - s, m + s, color=line.get_color(), alpha=0.2,
                    lw=0)
  return line


def accuracy_vs_density(workdirs: PathLike | Sequence[PathLike],
                        records: Iterable[dict] | None = None) -> Plot:
  """Test accuracy against density (log axis, decreasing to the right).

  One workdir: every series of the run (IMP: ticket and each control),
  mean ± std band over replicates, and the dense baseline as a horizontal
  band. Several: each run's main series (`series(main=True)`) and its dense
  baseline on one axis, labelled '<workdir name> <method>: <series>', and
  `data['matching']`: the series' accuracies at the densities (3
  significant digits) that two runs or more share.

  Args:
    workdirs: a workdir or a list of them.
    records: with one workdir, its records (default: read).

  Returns:
    (figure, {'runs': [{'workdir', 'method', 'recipe', 'series', 'dense'},
    ...], 'matching': [...]}) or None if no run has a finished ticket.
  """
  if isinstance(workdirs, (str, os.PathLike)):
    workdirs = [workdirs]
  several = len(workdirs) > 1
  all_runs = []
  for wd, name in zip(workdirs, _names(workdirs)):
    if several and driver.workdir_method(wd) == "stability":
      continue  # Its accuracies are the copies', per k: not a sparsity method.
    s = series(wd, None if several else records, main=several)
    all_runs.append({"workdir": os.fspath(pathlib.Path(wd).resolve()),
                     "name": name, "recipe": recipe(wd), **s})
  if not any(r["series"] or r["dense"] for r in all_runs):
    return None
  panels = list(dict.fromkeys(s["panel"] for r in all_runs
                              for s in r["series"])) or [""]
  fig, axes = _figure((12 if several else 5.5 + 3.5 * len(panels))
                      if len(panels) > 1 or several else 7.5, 5,
                      ncols=len(panels), sharey=True)
  # Several runs: each run's baseline takes a colour of its own, and so
  # does a method an earlier run of the figure has (two IMP runs), its
  # series in that run sharing it.
  first = {}
  for run in all_runs:
    for s in run["series"]:
      first.setdefault((s["label"].split() or [""])[0], run["name"])

  def word(key: str) -> str:
    run, label = key.rsplit("/", 1)
    method = (label.split() or [""])[0]
    if several and (method == "dense" or first.get(method) != run):
      return f"{run}/{method}".replace(" ", "_")
    return label

  styles = _styles((f"{run['name']}/{k}" for run in all_runs for k in
                    [s["label"] for s in run["series"]] +
                    (["dense"] if run["dense"] else [])), word=word)
  markers = "osD^v<>p*hXP"
  densities = []
  handles: dict[str, Any] = {}
  for run in all_runs:
    if several:  # A legend header per run: its method and recipe.
      where = f" [{run['name']}]" if run["name"] != run["method"] else ""
      h, = axes[0].plot([], [], " ", label=f"{run['method']}{where}: "
                        f"{run['recipe']}")
      handles[h.get_label()] = h
    for s in run["series"]:
      ax = axes[panels.index(s["panel"])]
      pts = s["points"]
      densities += [p["density"] for p in pts]
      label = s["label"]
      key = f"{run['name']}/{label}"
      dashed = run["method"] == "imp" and label != "ticket"
      line = _band(ax, [p["density"] for p in pts], [p["mean"] for p in pts],
                   [p["std"] for p in pts],
                   marker=markers[list(styles).index(key) % len(markers)],
                   ms=5, ls="--" if dashed else styles[key]["ls"],
                   color=styles[key]["color"],
                   label=("    " if several else "") + label)
      handles.setdefault(f"{key}", line)
    if run["dense"]:
      d = run["dense"]
      color = styles[f"{run['name']}/dense"]["color"]
      for ax in axes:
        line = ax.axhline(d["mean"], color=color, ls=":", lw=1.2,
                          label=("    " if several else "") + "dense" +
                          (f" ({d['n']} seeds)" if d["n"] > 1 else ""))
        if d["std"] > 0:
          ax.axhspan(d["mean"] - d["std"], d["mean"] + d["std"],
                     color=color, alpha=0.12, lw=0)
      handles[f"{run['name']}/dense"] = line
  for ax, p in zip(axes, panels):
    _density_axis(ax, densities or [1.0])
    ax.grid(alpha=0.3)
    if p:
      ax.set_title(p, fontsize="medium")
  axes[0].set_ylabel("test accuracy (fraction correct)")
  ns = {p["n"] for r in all_runs for s in r["series"] for p in s["points"]}
  # A stability run's points are its copies: two a seed.
  over = ("replicates and copies" if any(r["method"] == "stability"
                                         for r in all_runs) else "replicates")
  fig.suptitle("test accuracy at the end of training" +
               (f" (band: mean ± std over {over})" if max(ns, default=1)
                > 1 else ""))
  axes[-1].legend(handles=list(handles.values()), fontsize="small",
                  loc="upper left" if several else "center left",
                  bbox_to_anchor=(1.01, 1.0 if several else 0.5))
  return fig, {"runs": all_runs, "matching": _matching(all_runs)}


def _matching(all_runs: list[dict]) -> list[dict]:
  """Accuracies of every series at the densities two runs or more have."""
  at: dict[float, dict[str, dict]] = {}
  for run in all_runs:
    for s in run["series"]:
      for p in s["points"]:
        where = f" [{run['name']}]" if run["name"] != run["method"] else ""
        at.setdefault(float(f"{p['density']:.3g}"), {})[
            f"{run['method']}{where}: {s['label']}"] = {
                "run": run["name"], "mean": p["mean"], "std": p["std"],
                "n": p["n"]}
  return [{"density": d, "series": v} for d, v in sorted(at.items(),
                                                         reverse=True)
          if len({x["run"] for x in v.values()}) > 1]


# --- per-layer densities ---------------------------------------------------

def _short(layer: str) -> str:
  return layer[:-len("/kernel")] if layer.endswith("/kernel") else layer


def layer_densities(workdir: PathLike,
                    records: Iterable[dict] | None = None) -> Plot:
  """The density of each prunable layer (mean over replicates).

  IMP: one line per layer against the round, with the overall density.
  Other methods: one panel per target density, one line per method (and
  distribution) across the layers; a layer at 0 is disconnected.

  Returns:
    (figure, {'rows': [...]}) or None before any finished ticket.
  """
  method = driver.workdir_method(workdir)
  recs = _records(workdir, records)
  if method == "imp":
    rows = analysis.layer_table(workdir, [r for r in recs if "round" in r])
    if not rows:
      return None
    names = list(rows[0]["layers"])
    fig, (ax,) = _figure(7.5, 4.5)
    x = [r["round"] for r in rows]
    for n in names:
      ax.plot(x, [max(r["layers"][n], 1e-6) for r in rows], "o-", ms=3,
              label=_short(n))
    ax.plot(x, [r["density"] for r in rows], "k--", lw=2, label="overall")
    ax.set_yscale("log")
    _round_ticks(ax, x)
    ax.set_xlabel("IMP round")
    ax.set_ylabel("density of the layer (log scale)")
    ax.set_title("ticket's per-layer densities")
    ax.grid(alpha=0.3)
    _legend_right(ax)
    return fig, {"rows": rows}
  if method == "stability":
    recs = [r for r in recs if r.get("source") not in (None, "parent")
            and r.get("copy") == 0]
    by = ("source", "k")
  elif method == "pai":
    recs = [r for r in recs if r.get("check") is None and
            r.get("method") != "dense"]
    by = ("target_density", "method")
  elif method not in BUILT_IN:  # One panel, a line per group of replicates.
    recs = [{"method": method, "group": _plugin_label(r, names, method),
             **{k: r[k] for k in ("ticket", "workdir") if k in r}}
            for names, rs in _plugin_groups(workdir, recs) for r in rs]
    by = ("method", "group")
  else:
    recs = [r for r in recs if r.get("method") not in (None, "dense")]
    by = ("target_density", "method", "distribution")
  groups: dict[tuple, list[dict]] = {}
  for r in recs:
    groups.setdefault(tuple(r.get(k) for k in by), []).append(
        analysis.ticket_metrics(workdir, r)["layer_densities"])
  if not groups:
    return None
  rows = []
  for key, ms in groups.items():
    names = [n for n in ms[0] if not n.endswith("/bias") or len(ms[0]) < 3]
    rows.append({**dict(zip(by, key)),
                 "layers": {n: analysis.mean_std([m[n] for m in ms])[0]
                            for n in names}, "n": len(ms)})
  panel_key = by[0]
  panels = sorted({r[panel_key] for r in rows}, key=lambda v: (
      -v if isinstance(v, (int, float)) else 0, str(v)))
  fig, axes = _figure(min(4.2 * len(panels), 13) + 1.5, 3.8,
                      ncols=len(panels), sharey=True)
  styles = _styles(" ".join(str(r[k]) for k in by[1:]) for r in rows)
  for ax, pv in zip(axes, panels):
    for r in (r for r in rows if r[panel_key] == pv):
      names = list(r["layers"])
      label = " ".join(str(r[k]) for k in by[1:])
      ax.plot(range(len(names)), [max(v, 1e-6) for v in r["layers"].values()],
              marker="o", ms=4, label=label, **styles[label])
      ax.set_xticks(range(len(names)), [_short(n) for n in names],
                    rotation=45, ha="right", fontsize="small")
    ax.set_yscale("log")
    ax.set_title(f"{panel_key.replace('_', ' ')} {pv}", fontsize="medium")
    ax.grid(alpha=0.3)
  _label_and_legend(axes, "density of the layer (log; 1e-6 = empty)")
  return fig, {"rows": rows}


# --- mask overlap ----------------------------------------------------------

def _replicate_jaccard(workdir, groups: dict[tuple, list[dict]]) -> list[dict]:
  """Mean pairwise Jaccard of the masks of each group's replicates."""
  out = []
  for key, recs in groups.items():
    recs = sorted(recs, key=lambda r: str(r.get("seed")))
    if len(recs) < 2:
      continue
    ms = [tickets.read_ticket(workdir, r["ticket"]).mask for r in recs]
    pairs = [(ms[i], ms[j]) for i in range(len(ms))
             for j in range(i + 1, len(ms))]
    mean, std = analysis.mean_std([analysis.jaccard(*p) for p in pairs])
    d = analysis.mean_std([r["density"] for r in recs])[0]
    out.append({"group": list(key), "density": d, "pairs": len(pairs),
                "mean": mean, "std": std,
                # Random masks of the replicates' per-layer densities.
                "chance": analysis.mean_std(
                    [analysis.chance_jaccard(*p) for p in pairs])[0]})
  return out


def mask_overlap(workdir: PathLike,
                 records: Iterable[dict] | None = None) -> Plot:
  """How similar the masks are across replicates and (IMP) across rounds.

  Across replicates: the mean pairwise Jaccard |a ∧ b| / |a ∨ b| of the
  masks of a group's replicates, against density, with the chance level of
  independent random masks of their per-layer densities
  (`analysis.chance_jaccard`; d / (2 - d) where every layer has density
  d). Across rounds (IMP): `analysis.overlap_table`'s kept-from-previous,
  Jaccard with the previous round and overlap with the random_prune
  control with its chance level, mean ± std over replicates.

  Returns:
    (figure, {'replicates': [...], 'rounds': [...]}) or None when there is
    nothing to compare (one replicate and, for IMP, one round).
  """
  method = driver.workdir_method(workdir)
  recs = _records(workdir, records)
  if method == "imp":
    keep = [r for r in recs if r.get("kind") == "ticket" and "round" in r]
    groups: dict[tuple, list] = {}
    for r in keep:
      groups.setdefault(("ticket", r["round"]), []).append(r)
  else:
    if method == "pai":
      keep = [r for r in recs if r.get("check") is None
              and r.get("method") not in (None, "dense")]
      key = lambda r: (r["method"],)
    elif method == "sparse":
      keep = [r for r in recs if r.get("method") not in (None, "dense")]
      key = lambda r: (r["method"], r["distribution"])
    else:
      keep = [r for r in recs if r.get("source") not in (None, "parent")
              and r.get("copy") == 0]
      key = lambda r: (r["source"],)
    groups = {}
    for r in keep:
      groups.setdefault((*key(r), r["density"]), []).append(r)
  reps = _replicate_jaccard(workdir, groups)
  rounds = []
  if method == "imp":
    ov = analysis.overlap_table(workdir, keep + [
        r for r in recs if r.get("kind") == "random_prune"])
    for f in ("kept_from_previous", "jaccard_previous",
              "overlap_random_prune", "chance_random_prune"):
      if not any(f in row for row in ov):  # No random_prune control.
        continue
      for row in analysis.table(ov, f, by=("round",)):
        rounds.append({"field": f, **row})
  if not reps and not rounds:
    return None
  panels = [p for p in ("replicates", "rounds") if {"replicates": reps,
                                                     "rounds": rounds}[p]]
  fig, axes = _figure(6 * len(panels) + 1.5, 4.2, ncols=len(panels))
  ax_of = dict(zip(panels, axes))
  if reps:
    ax = ax_of["replicates"]
    labels: dict[str, list] = {}
    for r in reps:
      name = ("ticket" if method == "imp" else
              " ".join(str(v) for v in r["group"][:-1]))
      labels.setdefault(name, []).append(r)
    styles = _styles(labels)
    for i, (name, rows) in enumerate(labels.items()):
      rows.sort(key=lambda r: -r["density"])
      _band(ax, [r["density"] for r in rows], [r["mean"] for r in rows],
            [r["std"] for r in rows], marker="o", ms=4, label=name,
            **styles[name])
      # Each group's chance level: its masks' per-layer densities.
      ax.plot([r["density"] for r in rows], [r["chance"] for r in rows],
              ls=":", color=styles[name]["color"],
              label=("chance (random masks of the same layer densities)"
                     if i == 0 else None))
    _density_axis(ax, [r["density"] for r in reps])
    ax.set_ylabel("Jaccard overlap between replicates' masks")
    ax.set_ylim(0, 1.05)
    ax.set_title("across replicates (mean over pairs)", fontsize="medium")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
  if rounds:
    ax = ax_of["rounds"]
    names = {"kept_from_previous": "kept from previous round",
             "jaccard_previous": "Jaccard with previous round",
             "overlap_random_prune": "kept by random_prune"}
    for (f, label), m in zip(names.items(), "os^"):
      rows = sorted((r for r in rounds if r["field"] == f),
                    key=lambda r: r["round"])
      if rows:
        _band(ax, [r["round"] for r in rows], [r["mean"] for r in rows],
              [r["std"] for r in rows], marker=m, label=label)
    chance = sorted((r for r in rounds if r["field"] ==
                     "chance_random_prune"), key=lambda r: r["round"])
    if chance:
      ax.plot([r["round"] for r in chance], [r["mean"] for r in chance],
              "k:", label="chance for random_prune")
    _round_ticks(ax, sorted({r["round"] for r in rounds}))
    ax.set_xlabel("IMP round r (compared with round r − 1)")
    ax.set_ylabel("overlap (fraction of weights)")
    ax.set_ylim(0, 1.05)
    ax.set_title("across rounds", fontsize="medium")
    ax.grid(alpha=0.3)
    _legend_right(ax)
  return fig, {"replicates": reps, "rounds": rounds}


# --- learning curves -------------------------------------------------------

# A ramp of more lines than this (IMP's rounds) gets a colour bar, not a
# legend, which would cover the panel.
_RAMP_LEGEND = 10


def _ramp_bar(fig, ax, labels: Sequence[str], colors) -> None:
  """A colour bar beside `ax` for a ramp of lines, one band per line, with
  at most 12 of their labels."""
  from matplotlib.cm import ScalarMappable  # pylint: disable=g-import-not-at-top
  from matplotlib.colors import BoundaryNorm, ListedColormap  # pylint: disable=g-import-not-at-top
  n = len(labels)
  bar = fig.colorbar(
      ScalarMappable(BoundaryNorm(np.arange(n + 1) - 0.5, n),
                     ListedColormap(colors)), ax=ax, pad=0.02)
  shown = sorted(set(np.linspace(0, n - 1, min(n, 12)).round().astype(int)))
  bar.set_ticks(shown, labels=[labels[i] for i in shown], fontsize="x-small")


def learning_curves(workdir: PathLike, records: Iterable[dict] | None = None,
                    key: str = "accuracy") -> Plot:
  """Test accuracy (or another history field, `key`) during training, mean ±
  std over replicates.

  IMP: the ticket of every round, and the ticket against its controls at
  the last round that has controls. PaI and sparse training: one panel per
  target density, one line per method (the dense baseline in each).
  Stability: one panel per source, one line per k (copy 0 and 1 together).

  Returns:
    (figure, {'panels': [{'title', 'lines': [{'label', 'step', 'mean',
    'std'}]}]}) or None before any finished ticket.
  """
  from matplotlib import colormaps  # pylint: disable=g-import-not-at-top
  method = driver.workdir_method(workdir)
  recs = _records(workdir, records)
  panels: list[dict] = []

  def lines(groups: dict[str, list[dict]]):
    out = []
    for label, rs in groups.items():
      c = analysis.curve(workdir, rs, key)
      if c["step"]:
        out.append({"label": label, **c})
    return out

  if method == "imp":
    recs = [r for r in recs if "round" in r]
    rounds = sorted({r["round"] for r in recs if r["kind"] == "ticket"})
    by: dict[str, list] = {}
    for r in recs:
      if r["kind"] == "ticket":
        by.setdefault(f"round {r['round']} (density "
                      f"{r['density']:.3g})", []).append(r)
    panels.append({"title": "ticket, every round", "lines": lines(by),
                   "ramp": True})
    ctl = sorted({r["round"] for r in recs if r["kind"] != "ticket"})
    if ctl or rounds:
      last = ctl[-1] if ctl else rounds[-1]
      by = {}
      for r in recs:
        if r["round"] == last:
          by.setdefault(r["kind"], []).append(r)
      panels.append({"title": f"round {last}: ticket and controls",
                     "lines": lines(by)})
  elif method not in BUILT_IN:
    by = {}
    for names, rs in _plugin_groups(workdir, recs):
      for r in rs:
        by.setdefault(_plugin_label(r, names, method), []).append(r)
    panels.append({"title": f"{method}: every group", "lines": lines(by),
                   "ramp": len(by) > _RAMP_LEGEND})
  else:
    if method == "stability":
      recs = [r for r in recs if r.get("source") not in (None, "parent")]
      pk, lk = "source", lambda r: f"k={r['k']}"
    else:
      pk = "target_density"
      lk = (lambda r: r["method"] + (f" ({r['check']})" if r.get("check")
                                     else "")) if method == "pai" else (
          lambda r: f"{r['method']} ({r['distribution']})")
      if method == "pai":
        recs = [r for r in recs if r.get("check") is None]
    dense = [r for r in recs if r.get("method") == "dense"]
    values = sorted({r[pk] for r in recs if pk in r
                     and r.get("method") != "dense"},
                    key=lambda v: (-v if isinstance(v, (int, float)) else 0,
                                   str(v)))
    for v in values:
      by = {"dense": dense} if dense else {}
      for r in recs:
        if r.get(pk) == v and r.get("method") != "dense":
          by.setdefault(lk(r), []).append(r)
      name = pk.replace("_", " ")
      panels.append({"title": f"{name} {v}", "lines": lines(by),
                     "ramp": method == "stability"})
  panels = [p for p in panels if p["lines"]]
  if not panels:
    return None
  fig, axes = _figure(min(5.2 * len(panels), 16) + 1.5, 4.2,
                      ncols=len(panels), sharey=True)
  for ax, p in zip(axes, panels):
    n = len(p["lines"])
    labels = [l["label"] for l in p["lines"]]
    colors = colormaps["viridis"](np.linspace(0, 0.9, n))
    styles = ({k: {"color": c, "ls": "-"} for k, c in zip(labels, colors)}
              if p.get("ramp") else _styles(labels))
    for l in p["lines"]:
      _band(ax, l["step"], l["mean"], l["std"], label=l["label"],
            **styles[l["label"]])
    ax.set_title(p["title"], fontsize="medium")
    ax.set_xlabel("training step")
    ax.grid(alpha=0.3)
    if p.get("ramp") and n > _RAMP_LEGEND:
      _ramp_bar(fig, ax, labels, colors)
    else:
      ax.legend(fontsize="x-small")
  axes[0].set_ylabel(
      "test accuracy (fraction correct)" if key in ("accuracy", "test_accuracy")
      else key.replace("_", " "))
  for p in panels:
    p.pop("ramp", None)
  return fig, {"key": key, "panels": panels}


# --- stability: barrier and interpolation ----------------------------------

def _pairs(workdir: PathLike) -> list[dict]:
  return list(_summary(workdir).get("pairs", []))


def barrier(workdir: PathLike) -> Plot:
  """Stability: the error barrier (test and train) against the rewind step k,
  per source, mean ± std over replicates; the 2% line is Frankle et al.'s
  threshold of stability.

  Returns:
    (figure, {'rows': [{'source', 'k', 'split', 'n', 'mean', 'std'}]}) or
    None before the first finished pair.
  """
  pairs = _pairs(workdir)
  if not pairs:
    return None
  rows = []
  for split in ("test", "train"):
    groups: dict[tuple, list] = {}
    for p in pairs:
      groups.setdefault((p["source"], p["k"]), []).append(
          p[f"barrier_{split}"])
    for (src, k), v in groups.items():
      mean, std = analysis.mean_std(v)
      rows.append({"source": src, "k": k, "split": split, "n": len(v),
                   "mean": mean, "std": std})
  fig, axes = _figure(11.5, 4.2, ncols=2, sharey=True)
  ks = sorted({r["k"] for r in rows})
  sources = list(dict.fromkeys(r["source"] for r in rows))
  styles = _styles(sources)
  for ax, split in zip(axes, ("test", "train")):
    for src in sources:
      rs = sorted((r for r in rows if r["source"] == src
                   and r["split"] == split), key=lambda r: r["k"])
      _band(ax, [r["k"] for r in rs], [100 * r["mean"] for r in rs],
            [100 * r["std"] for r in rs], marker="o", label=src,
            **styles[src])
    ax.axhline(2.0, color="k", ls=":", lw=1, label="2% (stable below)")
    positive = [k for k in ks if k > 0]
    if positive and len(ks) > 2:
      ax.set_xscale("symlog", linthresh=min(positive))
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.minorticks_off()
    ax.set_xlabel("rewind step k (copies trained from step k)")
    ax.set_title(f"{split} error barrier", fontsize="medium")
    ax.grid(alpha=0.3)
  _label_and_legend(axes, "error barrier (percentage points)")
  return fig, {"rows": rows}


def interpolation(workdir: PathLike) -> Plot:
  """Stability: test and train error along the linear path between the two
  copies (alpha 0: copy 0, 1: copy 1), one line per (source, k), mean ± std
  over replicates.

  Returns:
    (figure, {'curves': [{'source', 'k', 'split', 'alpha', 'mean', 'std',
    'n'}]}) or None before the first finished pair.
  """
  from matplotlib import colormaps  # pylint: disable=g-import-not-at-top
  pairs = _pairs(workdir)
  if not pairs:
    return None
  curves = []
  for split in ("test", "train"):
    groups: dict[tuple, list] = {}
    for p in pairs:
      groups.setdefault((p["source"], p["k"]), []).append(p["path"])
    for (src, k), paths in groups.items():
      err = np.asarray([q[f"{split}_error"] for q in paths], float)
      curves.append({"source": src, "k": k, "split": split,
                     "alpha": paths[0]["alpha"],
                     "mean": err.mean(0).tolist(), "std": err.std(0).tolist(),
                     "n": len(paths)})
  sources = list(dict.fromkeys(c["source"] for c in curves))
  fig, axes = _figure(11.5, 3.8 * len(sources), ncols=2, nrows=len(sources),
                      sharey=True)
  for row, src in enumerate(sources):
    ks = sorted({c["k"] for c in curves if c["source"] == src})
    colors = colormaps["viridis"](np.linspace(0, 0.9, len(ks)))
    for col, split in enumerate(("test", "train")):
      ax = axes[2 * row + col]
      for k, color in zip(ks, colors):
        c = next(c for c in curves if (c["source"], c["k"], c["split"]) ==
                 (src, k, split))
        _band(ax, c["alpha"], [100 * v for v in c["mean"]],
              [100 * v for v in c["std"]], color=color, label=f"k={k}")
      ax.set_title(f"{src}: {split} error on the path", fontsize="medium")
      ax.set_xlabel("interpolation α (0: copy 0, 1: copy 1)")
      ax.grid(alpha=0.3)
    axes[2 * row].set_ylabel("error (%)")
    axes[2 * row + 1].legend(fontsize="small", loc="center left",
                             bbox_to_anchor=(1.01, 0.5))
  return fig, {"curves": curves}


def imp_barriers(workdir: PathLike,
                 records: Iterable[dict] | None = None) -> Plot:
  """IMP with `pruning.stability_every` / `pruning.level_barrier`: the error
  barriers against each round's density, mean ± std over replicates --
  instability (a ticket and its copy trained on another data order,
  Frankle et al. 2020) and the level barrier (the trained networks of round
  r - 1 and round r, Paul et al. 2023); the 2% line is the threshold of
  stability.

  Returns:
    (figure, {'rows': [{'series', 'round', 'density', 'split', 'n', 'mean',
    'std'}]}) or None when the run records no barrier.
  """
  recs = _records(workdir, records, copies=True)
  kinds = (("instability", _COPY, "barrier"),
           ("level barrier", "ticket", "level_barrier"))
  density = {r["round"]: r["density"] for r in recs
             if r.get("kind") == "ticket"}
  rows = []
  for split in ("test", "train"):
    for label, kind, key in kinds:
      groups: dict[int, list] = {}
      for r in recs:
        if r.get("kind") == kind and f"{key}_{split}" in r:
          groups.setdefault(r["round"], []).append(r[f"{key}_{split}"])
      for rnd in sorted(groups):
        mean, std = analysis.mean_std(groups[rnd])
        rows.append({"series": label, "round": rnd,
                     "density": density.get(rnd), "split": split,
                     "n": len(groups[rnd]), "mean": mean, "std": std})
  rows = [r for r in rows if r["density"] is not None]
  if not rows:
    return None
  fig, axes = _figure(11.5, 4.2, ncols=2, sharey=True)
  for ax, split in zip(axes, ("test", "train")):
    for i, (label, _, _) in enumerate(kinds):  # Not series of a method.
      rs = [r for r in rows if (r["series"], r["split"]) == (label, split)]
      if rs:
        _band(ax, [r["density"] for r in rs], [100 * r["mean"] for r in rs],
              [100 * r["std"] for r in rs], marker="o", label=label,
              color=_COLORS[i % len(_COLORS)])
    ax.axhline(2.0, color="k", ls=":", lw=1, label="2% (stable below)")
    _density_axis(ax, [r["density"] for r in rows])
    ax.set_title(f"{split} error barrier", fontsize="medium")
    ax.grid(alpha=0.3)
  _label_and_legend(axes, "error barrier (percentage points)")
  return fig, {"rows": rows}


# --- sparse training: mask change ------------------------------------------

def mask_change(workdir: PathLike,
                records: Iterable[dict] | None = None) -> Plot:
  """Sparse training: the fraction of the mask's kept weights that the
  initial mask did not keep, at every evaluation, mean ± std over
  replicates; one panel per (distribution, target density).

  Returns:
    (figure, {'rows': [{'distribution', 'target_density', 'method', 'step',
    'mean', 'std'}]}) or None before any finished sparse run.
  """
  recs = [r for r in _records(workdir, records)
          if r.get("method") not in (None, "dense") and
          "distribution" in r]
  groups: dict[tuple, dict[str, list]] = {}
  for r in recs:
    groups.setdefault((r["distribution"], r["target_density"]), {}
                      ).setdefault(r["method"], []).append(r)
  keys = sorted(groups, key=lambda k: (k[0], -k[1]))
  rows = []
  for key in keys:
    for m, rs in groups[key].items():
      c = analysis.curve(workdir, rs, "mask_change")
      if c["step"]:
        rows.append({"distribution": key[0], "target_density": key[1],
                     "method": m, **c})
  if not rows:
    return None
  keys = [k for k in keys if any((r["distribution"], r["target_density"]) ==
                                 k for r in rows)]
  styles = _styles(r["method"] for r in rows)
  fig, axes = _figure(min(4.5 * len(keys), 16) + 1.5, 3.8, ncols=len(keys),
                      sharey=True)
  for ax, key in zip(axes, keys):
    for r in rows:
      if (r["distribution"], r["target_density"]) == key:
        _band(ax, r["step"], r["mean"], r["std"], marker="o", ms=3,
              label=r["method"],
              **styles[r["method"]])
    ax.set_title(f"{key[0]}, density {key[1]}", fontsize="medium")
    ax.set_xlabel("training step")
    ax.grid(alpha=0.3)
  _label_and_legend(axes, "kept weights not in the initial mask")
  return fig, {"rows": rows}


# --- environment -----------------------------------------------------------

def environment() -> dict:
  """Software versions and the machine the report was made on."""
  versions = {}
  for pkg in ("lottery", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint",
              "numpy", "matplotlib"):
    try:
      versions[pkg] = importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
      versions[pkg] = "not installed"
  import jax  # pylint: disable=g-import-not-at-top
  try:
    devices = [str(d) for d in jax.devices()]
  except RuntimeError as e:  # No backend.
    devices = [f"unavailable ({e})"]
  return {"versions": versions,
          "machine": {"platform": platform.platform(),
                      "python": platform.python_version(),
                      "processor": platform.machine(),
                      "cpu_count": os.cpu_count(),
                      "jax_backend": jax.default_backend(),
                      "jax_devices": devices}}


# --- the page --------------------------------------------------------------

# The figures of each method's section, in order: (name, title, caption,
# function of (workdir, records)).
_SECTIONS: dict[str, list[tuple[str, str, str, Callable]]] = {}


def _common(with_overlap: bool = True):
  out = [("accuracy_vs_density", "Accuracy against density",
          "Test accuracy at the end of training against density (log scale, "
          "decreasing to the right); bands: mean ± std over replicates; "
          "dotted: the dense baseline.", accuracy_vs_density),
         ("layer_densities", "Per-layer densities",
          "Fraction of each prunable layer kept (mean over replicates).",
          layer_densities)]
  if with_overlap:
    out.append(("mask_overlap", "Mask overlap",
                "Jaccard overlap of the replicates' masks (chance: random "
                "masks of the same per-layer densities) and, for IMP, between "
                "consecutive rounds.", mask_overlap))
  out.append(("learning_curves", "Learning curves",
              "Test accuracy during training, mean ± std over replicates.",
              learning_curves))
  return out


_SECTIONS["imp"] = _common() + [
    ("barriers", "Error barriers against density",
     "Instability: the error barrier between each round's ticket and its "
     "copy trained on another data order (pruning.stability_every); level "
     "barrier: between the trained networks of consecutive rounds "
     "(pruning.level_barrier). Below 2%: stable.", imp_barriers)]
_SECTIONS["pai"] = _common()
_SECTIONS["sparse"] = _common() + [
    ("mask_change", "Mask change over training",
     "Fraction of the kept weights not in the initial mask, at every "
     "evaluation (static: 0; GMP only removes weights).", mask_change)]
_SECTIONS["stability"] = [
    ("barrier", "Error barrier against k",
     "Error barrier of the linear path between two copies trained from step "
     "k on different data orders; below 2%: stable.",
     lambda wd, recs: barrier(wd)),
    ("interpolation", "Interpolation curves",
     "Error along the linear path between the two copies.",
     lambda wd, recs: interpolation(wd)),
    ("learning_curves", "Learning curves",
     "Test accuracy of the copies during training, per k.",
     learning_curves)]


def _slug(text: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "run"


def _status(workdir: PathLike, method: str, recs: list[dict],
            partial: int = 0) -> str:
  finished = _summary(workdir).get("finished", False)
  n = len(analysis.replicates(recs))
  left = (f"; {partial} ticket{'s' if partial != 1 else ''} of groups whose "
          f"replicates are not all saved left out" if partial else "")
  return (f"{n} finished ticket{'s' if n != 1 else ''}; "
          f"{'run finished' if finished else 'run in flight or stopped'}"
          f"{left}")


def collect(workdirs: Sequence[PathLike]) -> tuple[list[Figure], list[dict]]:
  """Every figure of the report of `workdirs`, and each run's facts
  (name, method, recipe, status, config, facts.json)."""
  for wd in workdirs:
    check_workdir(wd)
  figures, runs_info = [], []
  for wd, name in zip(workdirs, _names(workdirs)):
    method = check_workdir(wd)
    recs, partial = whole_groups(wd, tickets.records(wd))
    facts_path = pathlib.Path(wd) / "facts.json"
    facts = checkpoint.read_json(facts_path) if facts_path.exists() else {}
    runs_info.append({
        "name": name, "workdir": os.fspath(pathlib.Path(wd).resolve()),
        "method": method, "recipe": recipe(wd),
        "status": _status(wd, method, recs, partial),
        "config": runs.load_config(wd).to_dict(), "facts": facts,
        "figures": []})
    for fname, title, caption, fn in _SECTIONS.get(method, _common(False)):
      got = fn(wd, recs)
      if got is None:
        continue
      fig, data = got
      figures.append(Figure(f"{name}_{fname}", title, caption, name, fig,
                            data))
      runs_info[-1]["figures"].append(f"{name}_{fname}")
  if len(workdirs) > 1:
    got = accuracy_vs_density(list(workdirs))
    if got is not None:
      figures.insert(0, Figure(
          "comparison_accuracy_vs_density",
          "Accuracy against density, all runs",
          "Each run's main series (IMP: the ticket; pruning at init: each "
          "method without checks; sparse training: each method and "
          "distribution) at the densities it ran, labelled by workdir and "
          "method; dotted: each run's dense baseline.", "comparison",
          *got))
  return figures, runs_info


def _png(fig) -> bytes:
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=100)
  return buf.getvalue()


_CSS = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:1em auto;
padding:0 1em;color:#222}
figure{margin:1em 0 2em 0}
figure img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:.9em;color:#555}
table{border-collapse:collapse;font-size:.85em}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}
pre{background:#f6f6f6;padding:.5em;overflow:auto;font-size:.8em;
max-height:24em}
details{margin:.5em 0}
"""


def _table(rows: dict) -> str:
  return "<table>" + "".join(
      f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
      for k, v in rows.items()) + "</table>"


def _matching_table(data: dict) -> str:
  rows = data.get("matching") or []
  if not rows:
    return ""
  labels = list(dict.fromkeys(k for r in rows for k in r["series"]))
  head = "".join(f"<th>{html.escape(l)}</th>" for l in labels)
  body = ""
  for r in rows:
    cells = ""
    for l in labels:
      v = r["series"].get(l)
      cells += ("<td>–</td>" if v is None else
                f"<td>{v['mean']:.4f}" + (f" ± {v['std']:.4f}" if v["n"] > 1
                                          else "") + "</td>")
    body += f"<tr><td>{r['density']:g}</td>{cells}</tr>"
  return (f"<p>At matching densities (test accuracy, mean ± std):</p>"
          f"<table><tr><th>density</th>{head}</tr>{body}</table>")


def _check_distinct(workdirs: Sequence[PathLike]) -> None:
  """Refuses a run given twice (by two spellings of its path too)."""
  seen: dict[pathlib.Path, PathLike] = {}
  for wd in workdirs:
    key = pathlib.Path(wd).resolve()
    if key in seen:
      raise LotteryError(f"workdir: {os.fspath(wd)!r} is given twice (also "
                         f"as {os.fspath(seen[key])!r}); give each run once")
    seen[key] = wd


def write_report(workdirs: PathLike | Sequence[PathLike], out: PathLike, *,
                 env: dict | None = None) -> list[Figure]:
  """Writes the report of `workdirs` to `out`: index.html (one page, the
  figures inline as PNG data URIs, no external reference: it opens
  offline), figures/NAME.png, NAME.svg and NAME.json (the plotted numbers),
  and report.json (runs, environment, figure names). A previous report in
  `out` is replaced whole (its figures too), once the new one is written.

  Raises:
    LotteryError: ('workdir: ...') if one of `workdirs` holds no run or is
      given twice, ('out: ...') if `out` may not take a report
      (`check_out`); nothing is written then.

  Returns:
    The report's figures, in page order.
  """
  if isinstance(workdirs, (str, os.PathLike)):
    workdirs = [workdirs]
  if not workdirs:
    raise LotteryError("workdir: give at least one workdir")
  _check_distinct(workdirs)
  check_out(out, workdirs)
  figures, runs_info = collect(workdirs)
  env = environment() if env is None else env
  name, final = os.fspath(out), _out_path(out)
  if final.exists() and not any(final.iterdir()):
    try:
      _write(final, figures, runs_info, env)  # An empty directory: in place.
    except BaseException:
      for p in final.iterdir():  # Empty again, as it was (an interrupt).
        if p.is_dir():
          shutil.rmtree(p)
        else:
          p.unlink()
      raise
    return figures
  # Written beside `out`, then swapped in: a failure leaves `out` as it was,
  # and no figure of a previous report stays behind.
  new = final.with_name(f".{final.name}.writing-{os.getpid()}")
  old = final.with_name(f".{final.name}.replaced-{os.getpid()}")
  try:
    final.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(new, ignore_errors=True)
    _write(new, figures, runs_info, env)
    if final.exists():
      final.rename(old)
    try:
      new.rename(final)
    except OSError:
      if old.exists():
        old.rename(final)  # The previous report, back in place.
      raise
  except OSError as e:
    raise LotteryError(f"out: cannot write the report to {name!r} "
                       f"({e.strerror or e})") from None
  finally:
    if old.exists() and not final.exists():
      old.rename(final)  # Interrupted between the two renames.
    shutil.rmtree(new, ignore_errors=True)
  shutil.rmtree(old, ignore_errors=True)
  return figures


def _write(out: pathlib.Path, figures: list[Figure], runs_info: list[dict],
           env: dict) -> None:
  """Writes the report's files into the new or empty directory `out`."""
  (out / "figures").mkdir(parents=True)
  pngs = {}
  for f in figures:
    pngs[f.name] = _png(f.figure)
    (out / "figures" / f"{f.name}.png").write_bytes(pngs[f.name])
    f.figure.savefig(out / "figures" / f"{f.name}.svg", format="svg")
    (out / "figures" / f"{f.name}.json").write_text(
        json.dumps(f.data, indent=1, allow_nan=True, default=str))
  parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'>"
           f"<title>lottery report</title><style>{_CSS}</style></head><body>",
           "<h1>lottery report</h1><ul>"]
  for r in runs_info:
    parts.append(f"<li><a href='#{r['name']}'>{html.escape(r['name'])}</a>: "
                 f"{html.escape(r['method'])}, {html.escape(r['recipe'])} "
                 f"({html.escape(r['status'])})</li>")
  parts.append("</ul>")

  def figure_html(f: Figure) -> str:
    b64 = base64.b64encode(pngs[f.name]).decode("ascii")
    return (f"<figure id='fig-{f.name}'><h3>{html.escape(f.title)}</h3>"
            f"<img class='report-figure' alt='{html.escape(f.title)}' "
            f"src='data:image/png;base64,{b64}'>"
            f"<figcaption>{html.escape(f.caption)} Files: figures/"
            f"{html.escape(f.name)}.png, .svg, .json.</figcaption>"
            f"</figure>")

  comp = [f for f in figures if f.section == "comparison"]
  if comp:
    parts.append("<h2 id='comparison'>Comparison</h2>")
    for f in comp:
      parts.append(figure_html(f) + _matching_table(f.data))
  for r in runs_info:
    parts.append(f"<h2 id='{r['name']}'>{html.escape(r['name'])}: "
                 f"{html.escape(r['method'])}</h2>")
    parts.append(_table({"workdir": r["workdir"], "method": r["method"],
                         "recipe": r["recipe"], "status": r["status"],
                         **{f"facts: {k}": v for k, v in r["facts"].items()}}))
    own = [f for f in figures if f.section == r["name"]]
    if not own:
      parts.append("<p>No finished ticket yet: nothing to plot.</p>")
    parts += [figure_html(f) for f in own]
    parts.append("<details><summary>config.json</summary><pre>"
                 f"{html.escape(json.dumps(r['config'], indent=1))}"
                 "</pre></details>")
  parts.append("<h2 id='environment'>Software and machine</h2>")
  parts.append(_table(env["versions"]))
  parts.append("<p></p>" + _table(env["machine"]))
  parts.append("</body></html>")
  (out / "index.html").write_text("\n".join(parts), encoding="utf-8")
  (out / _REPORT_FILE).write_text(json.dumps(
      {"runs": runs_info, "environment": env,
       "figures": [f.name for f in figures]}, indent=1, default=str))

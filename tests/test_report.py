"""The report (lottery.report, python -m experiments.report): figures, their
numbers and one self-contained HTML page, per method and across methods, on
finished runs and a run in flight; a directory that is not a workdir is
refused in one line. The slow tier opens the page in headless Chromium."""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import lottery
from lottery import analysis
from lottery import checkpoint
from lottery import method as method_lib
from lottery import report
from lottery import tickets

from conftest import run_until_round
from conftest import tiny

ROOT = pathlib.Path(__file__).resolve().parents[1]
pytest.importorskip("matplotlib")
FIGURES = {
    "imp": ["accuracy_vs_density", "layer_densities", "mask_overlap",
            "learning_curves", "barriers"],
    "pai": ["accuracy_vs_density", "layer_densities", "mask_overlap",
            "learning_curves"],
    "sparse": ["accuracy_vs_density", "layer_densities", "mask_overlap",
               "learning_curves", "mask_change"],
    "stability": ["barrier", "interpolation", "learning_curves"],
}


@pytest.fixture(scope="module")
def runs(npz_path, tmp_path_factory):
  """A small finished run of each method, two replicates each."""
  root = tmp_path_factory.mktemp("runs")
  quiet = {"log": lambda _: None}
  lottery.run(tiny(npz_path, **{"seeds.num": 2, "controls_every": 2,
                                 "pruning.stability_every": 1,
                                 "pruning.level_barrier": True,
                                 "pruning.path_points": 5}),
              root / "imp", **quiet)
  c = tiny(npz_path, method="pai", **{"seeds.num": 2, "training.steps": 10})
  c.pai.update(methods=("snip", "random"), densities=(0.25,),
               checks=("shuffle",), batch_size=32)
  lottery.pai.run(c, root / "pai", **quiet)
  c = tiny(npz_path, method="sparse", **{
      "seeds.num": 2, "sparse.methods": ("static", "set"),
      "sparse.densities": (0.25,),
      "sparse.distribution": ("erk", "uniform"),
      "sparse.update_every": 5, "sparse.end_step": 15})
  lottery.sparse.run(c, root / "sparse", **quiet)
  c = tiny(npz_path, method="stability", **{
      "seeds.num": 2, "training.steps": 12, "training.eval_every": 6,
      "training.checkpoint_every": 6, "stability.steps": (0, 4),
      "stability.points": 5})
  lottery.stability.run(c, root / "stability", **quiet)
  return {m: root / m for m in FIGURES}


@pytest.fixture(scope="module")
def written(runs, tmp_path_factory):
  out = tmp_path_factory.mktemp("report") / "out"
  figures = report.write_report(list(runs.values()), out)
  return out, figures


def _assert_self_contained(page: str):
  # Every src/href is a data: URI or an in-page anchor; no URL anywhere.
  refs = re.findall(r"""(?:src|href)\s*=\s*['"]([^'"]*)""", page)
  assert refs and all(r.startswith(("data:", "#")) for r in refs), refs
  assert not re.search(r"https?://", page)
  assert "<script" not in page and "<link" not in page


def test_lottery_report_and_analysis_are_attributes():
  # Imported on first use (`import lottery` imports no matplotlib: tested
  # in test_overhead.py).
  assert lottery.report is report and lottery.analysis is analysis
  with pytest.raises(AttributeError, match="has no attribute 'reports'"):
    lottery.reports  # pylint: disable=pointless-statement


def test_every_method_figures_json_and_page(runs, written):
  out, figures = written
  names = [f.name for f in figures]
  want = ["comparison_accuracy_vs_density"] + [
      f"{m}_{f}" for m in FIGURES for f in FIGURES[m]]
  assert names == want
  for name in names:
    for ext, size in (("png", 5000), ("svg", 5000), ("json", 100)):
      assert (out / "figures" / f"{name}.{ext}").stat().st_size > size, name
    assert (out / "figures" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
  page = (out / "index.html").read_text()
  _assert_self_contained(page)
  assert page.count("<img class='report-figure'") == len(names)
  info = json.loads((out / "report.json").read_text())
  assert info["figures"] == names
  assert [r["method"] for r in info["runs"]] == list(FIGURES)
  for r, wd in zip(info["runs"], runs.values()):
    assert r["facts"]["data_fingerprint"].startswith("sha256:")
    assert r["facts"]["data_fingerprint"] in page
    assert r["config"] == checkpoint.read_json(wd / "config.json")
    assert "run finished" in r["status"]
  env = info["environment"]
  assert set(env["versions"]) >= {"jax", "flax", "optax", "numpy", "lottery"}
  assert env["machine"]["cpu_count"] == os.cpu_count()
  assert env["machine"]["jax_devices"]
  for text in (env["versions"]["jax"], env["machine"]["platform"]):
    assert text in page


def test_plotted_numbers_are_the_records(runs, written):
  out, _ = written
  fig = lambda n: json.loads((out / "figures" / f"{n}.json").read_text())
  # IMP: mean and std over the two replicates, per (round, kind).
  acc = fig("imp_accuracy_vs_density")["runs"][0]
  # The tickets' copies on another data order are in the barrier figure
  # only.
  table = analysis.table([r for r in lottery.records(runs["imp"])
                          if r["kind"] != "stability_copy"], "test_accuracy")
  got = {(s["label"], p["density"]): p for s in acc["series"]
         for p in s["points"]}
  assert len(got) == len(table) - 1 + 1  # Round 0's ticket is a point too.
  for row in table:
    p = got[row["kind"], row["density"]]
    assert (p["mean"], p["std"], p["n"]) == (row["mean"], row["std"], 2)
  dense = next(r for r in table if r["round"] == 0)
  assert acc["dense"] == {"mean": dense["mean"], "std": dense["std"], "n": 2}
  assert sorted(s["label"] for s in acc["series"]) == [
      "random_prune", "reinit", "ticket"]
  # Layerwise at 0.5: every layer keeps 0.5 ** round.
  rows = fig("imp_layer_densities")["rows"]
  assert [r["density"] for r in rows] == [1.0, 0.5, 0.25]
  # Mask overlap across rounds: nested masks (kept 1.0, Jaccard 0.5).
  ov = fig("imp_mask_overlap")
  kept = [r for r in ov["rounds"] if r["field"] == "kept_from_previous"]
  assert [r["mean"] for r in kept] == [1.0, 1.0]
  assert [r["group"] for r in ov["replicates"]] == [
      ["ticket", 0], ["ticket", 1], ["ticket", 2]]
  assert ov["replicates"][0]["mean"] == 1.0  # Round 0 is dense.
  # Chance levels: random masks of the masks' own per-layer densities.
  masks = {(r["round"], r["kind"], r["seed"]): tickets.read_ticket(
      runs["imp"], r["ticket"]).mask for r in lottery.records(runs["imp"])
           if "seed" in r and r["kind"] in ("ticket", "random_prune")}
  for row in ov["replicates"]:
    rnd = row["group"][1]
    assert row["chance"] == analysis.chance_jaccard(
        masks[rnd, "ticket", 0], masks[rnd, "ticket", 1])
  chance = [r for r in ov["rounds"] if r["field"] == "chance_random_prune"]
  assert [r["round"] for r in chance] == [2]  # controls_every=2.
  assert chance[0]["mean"] == float(np.mean([analysis.chance_overlap(
      masks[2, "ticket", i], masks[2, "random_prune", i]) for i in (0, 1)]))
  # ERK's layers differ in density: its chance level is above d / (2 - d).
  erk = [r for r in fig("sparse_mask_overlap")["replicates"]
         if r["group"][:2] == ["static", "erk"]]
  assert len(erk) == 1 and erk[0]["chance"] > 1.05 * 0.25 / 1.75
  # IMP's barriers: per round, the mean and std of its replicates'.
  recs = lottery.records(runs["imp"])
  rows = fig("imp_barriers")["rows"]
  assert {(r["series"], r["split"]) for r in rows} == {
      (s, split) for s in ("instability", "level barrier")
      for split in ("test", "train")}
  for r in rows:
    kind, key = (("stability_copy", "barrier") if r["series"] ==
                 "instability" else ("ticket", "level_barrier"))
    vals = [x[f"{key}_{r['split']}"] for x in recs if "seed" in x and
            (x["kind"], x["round"]) == (kind, r["round"])]
    assert (r["mean"], r["std"], r["n"]) == (
        float(np.mean(vals)), float(np.std(vals)), 2)
  assert sorted({(r["series"], r["round"]) for r in rows}) == [
      ("instability", 0), ("instability", 1), ("instability", 2),
      ("level barrier", 1), ("level barrier", 2)]
  # Stability: barriers per k are the pairs'.
  pairs = lottery.stability.summary(runs["stability"])["pairs"]
  rows = fig("stability_barrier")["rows"]
  for r in rows:
    vals = [p[f"barrier_{r['split']}"] for p in pairs if p["k"] == r["k"]]
    assert (r["mean"], r["std"], r["n"]) == (
        float(np.mean(vals)), float(np.std(vals)), 2)
  curves = fig("stability_interpolation")["curves"]
  assert {len(c["alpha"]) for c in curves} == {5}
  # Sparse: mask change of static is 0 throughout.
  change = {r["method"]: r for r in fig("sparse_mask_change")["rows"]}
  assert change["static"]["mean"] == [0.0] * 4
  assert sorted(change) == ["set", "static"]
  # The comparison: IMP's ticket, PaI's methods, sparse's methods, labelled
  # by method and recipe; stability is left out.
  comp = fig("comparison_accuracy_vs_density")
  assert [r["method"] for r in comp["runs"]] == ["imp", "pai", "sparse"]
  assert [s["label"] for s in comp["runs"][1]["series"]] == ["snip",
                                                             "random"]
  assert all(r["recipe"].startswith("mlp_tiny on npz") for r in comp["runs"])
  assert comp["runs"][2]["recipe"] == "mlp_tiny on npz, 20 steps, ΔT=5"
  matching = {m["density"]: m for m in comp["matching"]}
  assert 0.25 in matching  # IMP's round 2, PaI's and sparse's target.
  assert {v["run"] for v in matching[0.25]["series"].values()} == {
      "imp", "pai", "sparse"}


def _labelled_lines(figure):
  """(axes index, label, colour, line style) of a figure's labelled lines."""
  from matplotlib import colors  # pylint: disable=g-import-not-at-top
  return [(i, line.get_label().strip(), colors.to_hex(line.get_color()),
           line.get_linestyle())
          for i, ax in enumerate(figure.figure.axes) for line in ax.get_lines()
          if line.get_label().strip() and
          not line.get_label().startswith("_")]


def test_a_stability_runs_accuracy_counts_its_copies(runs):
  # Two seeds, two copies each: n = 4 per (source, k), and the title says
  # the band is over copies too.
  fig, data = report.accuracy_vs_density(runs["stability"])
  points = [p for s in data["runs"][0]["series"] for p in s["points"]]
  assert points and {p["n"] for p in points} == {4}
  assert "over replicates and copies" in fig._suptitle.get_text()
  fig, _ = report.accuracy_vs_density(runs["imp"])
  assert fig._suptitle.get_text().endswith("over replicates)")


@method_lib.register
class _Stages(method_lib.Method):
  """A plug-in the report does not know: a dense stage, then a pruned
  stage (by |w| at init) per density of pai.densities."""

  name = "report_stages"
  fields = ("pai.densities",)

  def grid(self, ctx):
    return [{"stage": "dense", "target_density": 1.0}] + [
        {"stage": "pruned", "target_density": d}
        for d in ctx.config.pai.densities]

  def directory(self, coords):
    return f"{coords['stage']}/density_{coords['target_density']!r}"

  def start(self, ctx, coords):
    starts = []
    for i in range(ctx.replicates):
      params, model_state = ctx.init(i)
      mask = lottery.prune(ctx.exp.dense_mask, lottery.scores.magnitude(
          params), 1 - coords["target_density"], scope="global")
      starts.append(method_lib.Start(mask, params, model_state))
    return method_lib.GroupStart(starts)


def test_a_plug_in_methods_run_is_reported_by_its_coordinates(
    npz_path, runs, tmp_path):
  c = tiny(npz_path, method="report_stages", **{
      "seeds.num": 2, "pai.densities": (0.5, 0.25)})
  lottery.driver.run(c, tmp_path / "stages", log=lambda _: None)
  # Its own coordinates are listed where a ticket is not found.
  with pytest.raises(lottery.LotteryError, match=r"^stage: no finished "
                     r"ticket .* stage in \['dense', 'pruned'\]"):
    lottery.load_ticket(tmp_path / "stages", stage="fine")
  out = tmp_path / "out"
  figures = report.write_report([tmp_path / "stages", runs["imp"]], out)
  fig = lambda n: json.loads((out / "figures" / f"{n}.json").read_text())
  acc = fig("stages_accuracy_vs_density")["runs"][0]
  table = {(r["stage"], r["target_density"]): r for r in analysis.table(
      tmp_path / "stages", by=("stage", "target_density"))}
  got = {(s["label"], p["density"]): p for s in acc["series"]
         for p in s["points"]}
  # The dense stage is the run's dense baseline, the pruned one a series.
  assert len(got) == 2 and len(table) == 3
  for (stage, _), row in table.items():
    p = (acc["dense"] if stage == "dense" else
         got[f"stage={stage}", row["density"]])
    assert (p["mean"], p["std"], p["n"]) == (row["mean"], row["std"], 2)
  rows = fig("stages_layer_densities")["rows"]
  assert [r["group"] for r in rows] == [
      "dense (target_density=1.0)", "stage=pruned (target_density=0.5)",
      "stage=pruned (target_density=0.25)"]
  lines = fig("stages_learning_curves")["panels"][0]["lines"]
  assert [l["label"] for l in lines] == [r["group"] for r in rows]
  # A group has one colour in every figure of the run (its first word's),
  # the dense one gray.
  colours: dict[str, set] = {}
  for f in figures:
    if f.name.startswith("stages_"):
      for _, label, color, _ in _labelled_lines(f):
        colours.setdefault(label.split()[0], set()).add(color)
  assert colours["dense"] == {"#808080"}
  assert len(colours["stage=pruned"]) == 1
  assert colours["stage=pruned"] != colours["dense"]
  comp = fig("comparison_accuracy_vs_density")
  assert [r["method"] for r in comp["runs"]] == ["report_stages", "imp"]


def test_the_recipe_label_names_a_structure_and_a_score(runs, tmp_path):
  wd = tmp_path / "imp"
  shutil.copytree(runs["imp"], wd)
  c = checkpoint.read_json(wd / "config.json")
  c["pruning"].update(structure="neuron", group_score="l2",
                      score="random")
  checkpoint.write_json(wd / "config.json", c)
  assert report.recipe(wd).endswith(
      "/round, rewind k=0, score random, neuron structure, group score l2")
  assert report.recipe(runs["imp"]).endswith("/round, rewind k=0")


def test_a_series_has_one_colour_in_every_figure(written):
  _, figures = written
  lines = {f.name: _labelled_lines(f) for f in figures}
  for method, names in (("imp", ("ticket", "reinit", "random_prune")),
                        ("pai", ("snip", "random")),
                        ("sparse", ("static", "set"))):
    seen: dict[str, set] = {}
    for fig, got in lines.items():
      if fig.startswith(method):
        for _, label, color, _ in got:
          if label.split()[0] in names:
            seen.setdefault(label.split()[0], set()).add(color)
    assert all(len(c) == 1 for c in seen.values()), (method, seen)
    assert set(seen) == set(names), (method, seen)
    assert len({c for cs in seen.values() for c in cs}) == len(names)
  # The dense baseline is gray in each run's own figures.
  for fig in ("pai_learning_curves", "sparse_learning_curves",
              "imp_accuracy_vs_density"):
    assert {c for _, label, c, _ in lines[fig] if label.startswith(
        "dense")} == {"#808080"}, fig
  # In every panel, different series look different: a method's series
  # under two distributions share its colour in two line styles.
  for fig, got in lines.items():
    for ax in {i for i, *_ in got}:
      look: dict[tuple, set] = {}
      for i, label, c, ls in got:
        if i == ax and ls != "None":  # Not the comparison's run headers.
          look.setdefault((c, ls), set()).add(label)
      assert all(len(labels) == 1 for labels in look.values()), (fig, look)
  layer = {label: (c, ls) for _, label, c, ls in
           lines["sparse_layer_densities"]}
  assert layer["static erk"][0] == layer["static uniform"][0]
  assert layer["static erk"][1] != layer["static uniform"][1]


def test_comparison_tells_two_runs_of_one_method_apart(runs, tmp_path):
  """Runs of one method on one figure, in folders of the same name: the
  second run's series take a colour no other series has, shared by its
  series of one method (in two line styles); each dense baseline takes one
  of its own; the legend heads both runs."""
  import shutil  # pylint: disable=g-import-not-at-top
  other = tmp_path / runs["sparse"].name
  shutil.copytree(runs["sparse"], other)
  fig, data = report.accuracy_vs_density([runs["sparse"], other, runs["pai"]])
  assert [r["name"] for r in data["runs"]] == ["sparse", "sparse_2", "pai"]
  # A name taken by a '_2' folder, or the page's own sections: the next.
  assert report._names([runs["sparse"], other, tmp_path / "x" / "sparse_2",
                        tmp_path / "comparison"]) == [
                            "sparse", "sparse_2", "sparse_2_2",
                            "comparison_2"]
  lines = _labelled_lines(report.Figure("x", "", "", "", fig, data))
  series = [(label, c, ls) for _, label, c, ls in lines if ls != "None"]
  headers = [label for _, label, _, ls in lines if ls == "None"]
  assert len(headers) == 3 and "[sparse_2]" in headers[1], headers
  colour = {}
  for label, c, ls in series:
    colour.setdefault(c, []).append((label.split()[0], ls))
  # sparse: static and set (erk, uniform) twice; pai: snip, random; 3 dense.
  groups = sorted(sorted(v) for v in colour.values())
  assert groups == sorted(
      [[("static", "-"), ("static", "--")]] * 2 +
      [[("set", "-"), ("set", "--")]] * 2 +
      [[("snip", "-")], [("random", "-")]] + [[("dense", ":")]] * 3), groups


def test_built_in_names_keep_their_colours():
  # A user's method never takes a built-in's colour from it; a figure with
  # more names than the palette's nine colours takes their light shades,
  # then repeats colours in another line style.
  one = report._styles(["snip"])["snip"]
  for first in ("mymethod10", "x", "my method"):
    assert report._styles([first, "snip"])["snip"] == one
  many = report._styles([f"m{i}" for i in range(18)])
  assert len({s["color"] for s in many.values()}) == 18
  assert {s["ls"] for s in many.values()} == {"-"}
  many = report._styles([f"m{i}" for i in range(40)])
  assert len({(s["color"], s["ls"]) for s in many.values()}) == 40


def test_run_in_flight_shows_what_is_finished(npz_path, tmp_path):
  """IMP stopped after round 0: its figures show round 0 only."""
  wd = tmp_path / "run"
  run_until_round(tiny(npz_path), wd, 0)
  figures = report.write_report(wd, tmp_path / "out")
  names = [f.name for f in figures]
  # One round, one replicate: no overlap to show yet.
  assert names == ["run_accuracy_vs_density", "run_layer_densities",
                   "run_learning_curves"]
  data = figures[0].data["runs"][0]
  assert [(s["label"], len(s["points"])) for s in data["series"]] == [
      ("ticket", 1)]
  page = (tmp_path / "out" / "index.html").read_text()
  assert "run in flight or stopped" in page
  # Nothing finished at all: a section without figures.
  empty = tmp_path / "empty"
  empty.mkdir()
  shutil.copy(wd / "config.json", empty)
  assert report.write_report(empty, tmp_path / "out2") == []
  assert "No finished ticket yet" in (tmp_path / "out2" /
                                      "index.html").read_text()


def test_a_group_with_replicates_missing_is_left_out(npz_path, tmp_path):
  """A run in flight saves a group's replicates one after another: a group
  of which one is saved is left out, and counted in the run's status."""
  wd = tmp_path / "run"
  run_until_round(tiny(npz_path, **{"seeds.num": 2, "controls": ()}), wd, 1)
  # As if stopped between round 1's two tickets: seed 1's is not saved, and
  # the round is not yet in summary.json.
  shutil.rmtree(wd / "rounds" / "round_001" / "ticket" / "seed_1")
  summary = json.loads((wd / "summary.json").read_text())
  del summary["_sha256"]
  summary["rounds"] = [r for r in summary["rounds"] if r["round"] == 0]
  checkpoint.write_json(wd / "summary.json", summary)
  recs = lottery.records(wd)
  assert sorted((r["round"], r["seed"]) for r in recs) == [
      (0, 0), (0, 1), (1, 0)]
  kept, left = report.whole_groups(wd, recs)
  assert (sorted((r["round"], r["seed"]) for r in kept), left) == (
      [(0, 0), (0, 1)], 1)
  figures = report.write_report(wd, tmp_path / "out")
  acc = figures[0].data["runs"][0]
  assert [(s["label"], [(p["density"], p["n"]) for p in s["points"]])
          for s in acc["series"]] == [("ticket", [(1.0, 2)])]
  meta = json.loads((tmp_path / "out" / "report.json").read_text())
  assert meta["runs"][0]["status"] == (
      "2 finished tickets; run in flight or stopped; 1 ticket of groups "
      "whose replicates are not all saved left out")
  # A finished run's records are whole as they are.
  summary["finished"] = True
  checkpoint.write_json(wd / "summary.json", summary)
  assert report.whole_groups(wd, recs) == (recs, 0)


def test_out_takes_a_new_dir_or_a_previous_report_and_replaces_it(
    runs, written, tmp_path, monkeypatch):
  from experiments import report as report_cli  # pylint: disable=g-import-not-at-top
  out = tmp_path / "out"
  shutil.copytree(written[0], out)  # The report of every method's run.
  figures = report.write_report(runs["sparse"], out)
  assert sorted(p.name for p in (out / "figures").glob("*.png")) == sorted(
      f"sparse_{f}.png" for f in FIGURES["sparse"]) == sorted(
          f"{f.name}.png" for f in figures)
  assert json.loads((out / "report.json").read_text())["figures"] == [
      f.name for f in figures]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
  # Refused, each in one line, with nothing written or changed.
  (tmp_path / "notes").mkdir()
  (tmp_path / "notes" / "index.html").write_text("mine")
  (tmp_path / "file").write_text("mine")
  (tmp_path / "project").mkdir()  # A report.json of another tool's.
  (tmp_path / "project" / "report.json").write_text('{"runs": [], '
                                                    '"environment": {}, '
                                                    '"figures": []}')
  (tmp_path / "project" / "main.py").write_text("mine")
  for bad, why in [
      (tmp_path / "file", "is a file, not a directory"),
      (runs["imp"], "is or holds a lottery workdir; write the report to a "
       "directory of its own"),
      (runs["imp"].parent, "is or holds a lottery workdir; write the report "
       "to a directory of its own"),
      (runs["imp"] / "report", f"is inside the lottery workdir "
       f"{os.path.realpath(runs['imp'])!r}; write the report to a directory "
       f"of its own"),
      (runs["imp"] / "rounds" / "new", f"is inside the lottery workdir "
       f"{os.path.realpath(runs['imp'])!r}; write the report to a directory "
       f"of its own"),
      (tmp_path / "notes", "holds files that are not a report (a report "
       "holds only index.html, report.json and figures/); give a new or "
       "empty directory, or a previous report's"),
      (tmp_path / "project", "holds files that are not a report (a report "
       "holds only index.html, report.json and figures/); give a new or "
       "empty directory, or a previous report's")]:
    before = sorted(p.name for p in pathlib.Path(bad).parent.iterdir())
    with pytest.raises(lottery.LotteryError) as e:
      report.write_report(runs["pai"], bad)
    assert str(e.value) == f"out: {str(bad)!r} {why}"
    with pytest.raises(SystemExit) as e:
      report_cli.main([str(runs["pai"]), f"--out={bad}"])
    assert e.value.code == 1
    assert sorted(p.name for p in pathlib.Path(bad).parent.iterdir()) == before
  with pytest.raises(lottery.LotteryError) as e:  # Below a file.
    report.write_report(runs["pai"], tmp_path / "file" / "sub")
  assert str(e.value) == (f"out: {str(tmp_path / 'file' / 'sub')!r} cannot "
                          f"be created: {str(tmp_path / 'file')!r} is a file")
  assert (tmp_path / "notes" / "index.html").read_text() == "mine"
  assert (tmp_path / "file").read_text() == "mine"
  assert (tmp_path / "project" / "main.py").read_text() == "mine"
  # '.', and a link to a previous report (replaced where it points).
  monkeypatch.chdir(out)
  report.write_report(runs["stability"], ".")
  assert sorted(p.name for p in (out / "figures").glob("*.png"))[0].startswith(
      "stability_")
  (tmp_path / "link").symlink_to(out)
  report.write_report(runs["sparse"], tmp_path / "link")
  assert (tmp_path / "link").is_symlink()
  assert sorted(p.name for p in (out / "figures").glob("*.png"))[0].startswith(
      "sparse_")
  assert sorted(p.name for p in tmp_path.iterdir()) == [
      "file", "link", "notes", "out", "project"]


@pytest.mark.parametrize("damaged", ["summary.json", "metrics.json"])
def test_a_damaged_run_is_refused_not_reported_empty(runs, tmp_path, damaged):
  wd = tmp_path / "wd"
  shutil.copytree(runs["stability"], wd)
  path = (wd / damaged if damaged == "summary.json" else
          sorted(wd.glob(f"**/{damaged}"))[0])
  path.write_text(path.read_text()[:20])
  with pytest.raises(lottery.LotteryError) as e:
    report.write_report(wd, tmp_path / "out")
  assert str(e.value).startswith(f"workdir: file {str(path)!r} is damaged")
  assert "\n" not in str(e.value)
  assert not (tmp_path / "out").exists()


def test_long_runs_get_a_colour_bar_and_integer_round_ticks(
    runs, monkeypatch):
  from matplotlib.figure import Figure as MplFigure  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(report, "_RAMP_LEGEND", 2)
  fig, data = report.learning_curves(runs["imp"])
  labels = [l["label"] for l in data["panels"][0]["lines"]]
  assert len(labels) > 2
  ramp, controls = fig.axes[:2]
  assert ramp.get_legend() is None and controls.get_legend() is not None
  bar, = fig.axes[2:]  # The colour bar: a band and a label per line.
  assert [t.get_text() for t in bar.get_yticklabels()] == labels
  ax = MplFigure().subplots()
  ax.plot(range(33), range(33))
  report._round_ticks(ax, range(33))
  ticks = [t for t in ax.get_xticks() if 0 <= t <= 32]
  assert 5 <= len(ticks) <= 13 and all(t == int(t) for t in ticks)
  report._round_ticks(ax, range(5))
  assert list(ax.get_xticks()) == [0, 1, 2, 3, 4]


def _cli(*args, cwd):
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(
      [str(ROOT), os.environ.get("PYTHONPATH", "")]), "JAX_PLATFORMS": "cpu"}
  return subprocess.run([sys.executable, "-m", "experiments.report", *args],
                        cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=300)


def test_cli_refuses_a_directory_that_is_not_a_workdir(runs, tmp_path):
  out = tmp_path / "out"
  (tmp_path / "plain").mkdir()
  (tmp_path / "plain" / "f").write_text("not a run")
  for bad, why in ((tmp_path / "plain", "holds no run (config.json missing)"),
                   (tmp_path / "missing", "does not exist"),
                   (tmp_path / "plain" / "f", "is not a directory")):
    p = _cli(str(runs["imp"]), str(bad), f"--out={out}", cwd=tmp_path)
    assert p.returncode == 1
    assert p.stderr == f"error: workdir: {str(bad)!r} {why}\n"
    assert not out.exists()
  # A run given twice, under two spellings.
  p = _cli(str(runs["imp"]), str(runs["imp"]) + "/", f"--out={out}",
           cwd=tmp_path)
  assert p.returncode == 1
  assert p.stderr == (f"error: workdir: {str(runs['imp']) + '/'!r} is given "
                      f"twice (also as {str(runs['imp'])!r}); give each run "
                      f"once\n")
  assert not out.exists()
  p = _cli(str(runs["imp"]), cwd=tmp_path)  # --out is required.
  assert p.returncode == 2 and "--out" in p.stderr


def test_cli_writes_the_report(runs, tmp_path):
  p = _cli(str(runs["sparse"]), f"--out={tmp_path / 'out'}", cwd=tmp_path)
  assert p.returncode == 0, p.stderr
  assert "5 figures" in p.stderr
  assert sorted(x.name for x in (tmp_path / "out" / "figures").glob("*.png")
                ) == sorted(f"sparse_{f}.png" for f in FIGURES["sparse"])


def _chromium():
  return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
def test_page_renders_in_a_browser(written, tmp_path):
  """Headless Chromium opens the page offline: its screenshot is not blank,
  and every figure's image decoded (naturalWidth > 0)."""
  browser = _chromium()
  if browser is None:
    pytest.skip("chromium is not installed (apt-get install chromium; "
                ".ci/run installs it)")
  out, figures = written
  page = (out / "index.html").read_text()
  _assert_self_contained(page)
  # A copy of the page with a probe that records how many images decoded.
  probe = ("<script>window.addEventListener('load', () => {"
           "const imgs = [...document.querySelectorAll('img.report-figure')];"
           "document.body.dataset.rendered = imgs.filter("
           "i => i.complete && i.naturalWidth > 0).length;});</script>")
  probed = tmp_path / "probed.html"
  probed.write_text(page.replace("</body>", probe + "</body>"))
  flags = ["--headless", "--disable-gpu", "--no-sandbox",
           "--window-size=1200,3000", "--virtual-time-budget=5000"]
  dom = subprocess.run([browser, *flags, "--dump-dom",
                        probed.as_uri()], capture_output=True, text=True,
                       timeout=120)
  m = re.search(r'data-rendered="(\d+)"', dom.stdout)
  assert m, dom.stderr[-2000:]
  assert int(m[1]) == len(figures)
  shot = tmp_path / "shot.png"
  subprocess.run([browser, *flags, f"--screenshot={shot}",
                  (out / "index.html").as_uri()], capture_output=True,
                 timeout=120)
  assert shot.exists()
  from matplotlib import image  # pylint: disable=g-import-not-at-top
  pixels = image.imread(shot)
  assert pixels.shape[:2] == (3000, 1200)
  assert pixels[..., :3].std() > 0.05  # Not blank.

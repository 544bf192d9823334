"""Config validation: every bad value refused in one line that names the
field, a rule for every field of the schema, and the entry point's one-line
errors."""

import os
import pathlib
import subprocess
import sys

import ml_collections
import pytest

import lottery
from lottery import config as config_lib

from conftest import config_from_dict

ROOT = pathlib.Path(__file__).resolve().parents[1]
INF, NAN = float("inf"), float("nan")


@pytest.mark.parametrize("key,value,field", [
    ("pruning.fraction", 0.0, "pruning.fraction"),
    ("pruning.fraction", 1.0, "pruning.fraction"),
    ("pruning.fraction", -0.2, "pruning.fraction"),
    ("pruning.rounds", -1, "pruning.rounds"),
    ("pruning.scope", "everywhere", "pruning.scope"),
    ("pruning.score", "vibes", "pruning.score"),
    ("pruning.reset", "rewnd", "pruning.reset"),
    ("pruning.rewind_step", 20, "pruning.rewind_step"),  # steps = 20
    ("pruning.prunable", ("(",), "pruning.prunable"),
    ("pruning.layer_fractions", "out/kernel=2", "pruning.layer_fractions"),
    ("model.name", "resnet9000", "model.name"),
    ("data.name", "imagenet22k", "data.name"),
    ("training.optimizer", "adamax", "training.optimizer"),
    ("training.learning_rate", 0.0, "training.learning_rate"),
    ("training.steps", 0, "training.steps"),
    ("training.batch_size", 0, "training.batch_size"),
    ("training.lr_boundaries", (15, 5), "training.lr_boundaries"),
    ("training.momentum", 1.5, "training.momentum"),
    ("training.schedule", "linear", "training.schedule"),
    ("controls", ("reinit", "shufle"), "controls"),
    ("controls_every", 0, "controls_every"),
    ("seeds.init", -1, "seeds.init"),
    ("data.validation_size", -5, "data.validation_size"),
])
def test_invalid_values_name_the_field(tiny_config, tmp_path, key, value,
                                       field):
  cfg = tiny_config(**{key: value})
  with pytest.raises(lottery.LotteryError) as e:
    lottery.run(cfg, tmp_path / "wd", log=print)
  assert str(e.value).startswith(field + ":")
  assert "\n" not in str(e.value)
  assert not (tmp_path / "wd").exists()  # Raised before anything is written.


# (changed field, value, the message's start).
BAD_CONFIGS = [
    ("training.lr", 1, "config: no field 'training.lr' (did you mean "
     "'training.learning_rate'?)"),
    ("pruning.fracton", 0.5, "config: no field 'pruning.fracton' (did you "
     "mean 'pruning.fraction'?)"),
    ("trainin", {"steps": 5}, "config: no field 'trainin' (did you mean "
     "'training'?)"),
    ("training", 5, "training: must be a group of fields (got 5)"),
    ("training.steps", "100", "training.steps: must be an integer in "
     "[1, 1000000000] (got '100')"),
    ("training.steps", 10**12, "training.steps: "),
    ("training.steps", 2.0, "training.steps: "),
    ("training.batch_size", True, "training.batch_size: "),
    ("training.batch_size", None, "training.batch_size: "),
    ("training.learning_rate", INF, "training.learning_rate: must be in "
     "(0, 1000] (got inf)"),
    ("training.learning_rate", NAN, "training.learning_rate: "),
    ("training.learning_rate", 1e4, "training.learning_rate: "),
    ("training.learning_rate", "0.1", "training.learning_rate: must be a "
     "number in (0, 1000] (got '0.1')"),
    ("training.learning_rate", -0.1, "training.learning_rate: "),
    ("training.weight_decay", 1e300, "training.weight_decay: must be in "
     "[0, 1000) (got 1e+300)"),
    ("training.weight_decay", -1e-4, "training.weight_decay: "),
    ("training.momentum", -0.5, "training.momentum: "),
    ("training.momentum", NAN, "training.momentum: "),
    ("training.nesterov", "yes", "training.nesterov: must be True or False"),
    ("training.lr_decay", 0.0, "training.lr_decay: "),
    ("training.lr_decay", INF, "training.lr_decay: "),
    ("training.lr_boundaries", ("5",), "training.lr_boundaries: "),
    ("training.lr_boundaries", 5, "training.lr_boundaries: "),
    ("training.warmup_steps", 20, "training.warmup_steps: must be below "
     "training.steps=20"),
    ("training.label_smoothing", 1.0, "training.label_smoothing: must be in "
     "[0, 1) (got 1.0)"),
    ("training.label_smoothing", -0.1, "training.label_smoothing: "),
    ("training.eval_every", 0, "training.eval_every: "),
    ("training.checkpoint_every", -1, "training.checkpoint_every: "),
    ("seeds.init", 2**70, "seeds.init: must be an integer in [0, 2147483647]"),
    ("seeds.data", 2**31, "seeds.data: "),
    ("seeds.control", 1.5, "seeds.control: "),
    ("data.name", 7, "data.name: "),
    ("data.path", "", "data.path: set it to an .npz file"),
    ("data.data_dir", None, "data.data_dir: must be a string"),
    ("data.cache_dir", 3, "data.cache_dir: "),
    ("data.on_device", 1, "data.on_device: must be True or False"),
    ("data.validation_size", 10**10, "data.validation_size: "),
    ("model.name", None, "model.name: "),
    ("model.bn_init", "zeros", "model.bn_init: must be one of ['ones', "
     "'uniform', 'zero_last'] (got 'zeros')"),
    ("model.bn_init", "uniform", "model.bn_init: not an option of model "),
    ("pruning.fraction", NAN, "pruning.fraction: must be in (0, 1) (got nan)"),
    ("pruning.fraction", "0.2", "pruning.fraction: must be a number in "
     "(0, 1)"),
    ("pruning.rounds", 1.0, "pruning.rounds: "),
    ("training.weight_decay_on", (), "training.weight_decay_on: must be a "
     "non-empty tuple of regexes"),
    ("training.weight_decay_on", ("[",), "training.weight_decay_on: invalid "
     "regex '['"),
    ("training.weight_decay_on", (".*kernel",), "training.weight_decay_on: "
     "is read with training.weight_decay > 0, and it is 0"),
    ("pruning.prunable", (), "pruning.prunable: "),
    ("pruning.prunable", ".*kernel", "pruning.prunable: "),
    ("pruning.prunable", (3,), "pruning.prunable: "),
    ("pruning.layer_fractions", ("out/kernel=0.1",),
     "pruning.layer_fractions: must be a string"),
    ("pruning.reset", None, "pruning.reset: "),
    ("pruning.rewind_step", -1, "pruning.rewind_step: "),
    ("controls", "reinit", "controls: must be a tuple, e.g. ('reinit',) "
     "(got 'reinit')"),
    ("controls", ("reinit", 1), "controls: "),
    ("controls", ("reinit", "reinit"), "controls: must not repeat"),
    # 'a,b' on the command line: the message shows the tuple to write.
    ("controls", ("reinit,random_prune",), "controls: must be one of "
     "['random_prune', 'reinit', 'scratch', 'shuffle']; several are a tuple, "
     "--config.controls=\"('reinit', 'random_prune')\" "
     "(got 'reinit,random_prune')"),
    # A field of one value gets no such hint.
    ("training.optimizer", "sgd,adam", "training.optimizer: must be one of "
     "['sgd', 'adam', 'adamw'] (got 'sgd,adam')"),
    ("controls_every", False, "controls_every: "),
    ("pai.methods", (), "pai.methods: must name at least one score"),
    ("pai.methods", "snip", "pai.methods: must be a tuple"),
    ("pai.methods", ("snip", "sinp"), "pai.methods: must be one of"),
    ("pai.methods", ("snip", "snip"), "pai.methods: must not repeat"),
    ("pai.densities", (), "pai.densities: must hold at least one"),
    ("pai.densities", (0.1, 1.0), "pai.densities: must be in (0, 1)"),
    ("pai.densities", (0.0,), "pai.densities: must be in (0, 1)"),
    ("pai.densities", (NAN,), "pai.densities: "),
    ("pai.densities", ("0.1",), "pai.densities: must be a number"),
    ("pai.checks", ("shuffle", "flip"), "pai.checks: must be one of"),
    ("pai.checks", ("invert", "invert"), "pai.checks: must not repeat"),
    ("pai.iterations", 0, "pai.iterations: must be an integer in [1, "),
    ("pai.method_iterations", "synflow", "pai.method_iterations: must be "
     "'method=iterations,...'"),
    ("pai.method_iterations", "synflow=-3", "pai.method_iterations: "),
    ("pai.method_iterations", "synflo=10", "pai.method_iterations: must be "
     "one of"),
    ("pai.method_iterations", "snip=0", "pai.method_iterations: iterations "
     "of 'snip' must be in"),
    ("pai.scope", "local", "pai.scope: must be one of"),
    ("pai.batch_size", 0, "pai.batch_size: "),
    ("pai.dense", 1, "pai.dense: must be True or False"),
    # Sparse training (lottery.sparse).
    ("sparse.methods", ("rigl", "snip"), "sparse.methods: must be one of "
     "['gmp', 'nm', 'rigl', 'set', 'sr_ste', 'static'] (got 'snip')"),
    ("sparse.methods", (), "sparse.methods: must be a non-empty tuple"),
    ("sparse.methods", ("rigl", "rigl"), "sparse.methods: must not repeat"),
    ("sparse.densities", (0.1, 1.0), "sparse.densities: must be in (0, 1) "
     "(got 1.0)"),
    ("sparse.densities", "0.1", "sparse.densities: must be a non-empty "
     "tuple"),
    ("sparse.densities", (NAN,), "sparse.densities: "),
    ("sparse.densities", (0.1, 0.1), "sparse.densities: must not repeat"),
    ("sparse.distribution", ("erk", "er"), "sparse.distribution: must be "
     "one of ['erk', 'uniform'] (got 'er')"),
    ("sparse.update_every", 0, "sparse.update_every: must be an integer in "
     "[1, "),
    ("sparse.drop_fraction", 1.0, "sparse.drop_fraction: must be in (0, 1) "
     "(got 1.0)"),
    ("sparse.end_fraction", 0.0, "sparse.end_fraction: must be in (0, 1] "
     "(got 0.0)"),
    ("sparse.begin_step", -1, "sparse.begin_step: "),
    ("sparse.end_step", 2.5, "sparse.end_step: "),
]


@pytest.mark.parametrize(
    "changes,start", [({k: v}, s) for k, v, s in BAD_CONFIGS],
    ids=[f"{k}={v!r}" for k, v, _ in BAD_CONFIGS])
def test_bad_value_refused_naming_the_field(npz_path, changes, start):
  """Each bad value is refused by `lottery.build` in one line that starts
  with the field (bad data files: tests/test_data.py)."""
  with pytest.raises(lottery.LotteryError) as e:
    lottery.build(config_from_dict(npz_path, changes))
  msg = str(e.value)
  assert msg.startswith(start), msg
  assert "\n" not in msg, msg


def test_table_is_long_enough():
  assert len(BAD_CONFIGS) >= 40


def test_checks_that_need_the_data_or_model(tiny_config, tmp_path):
  with pytest.raises(lottery.LotteryError, match="^training.batch_size: 512"):
    lottery.run(tiny_config(**{"training.batch_size": 512}), tmp_path / "a")
  with pytest.raises(lottery.LotteryError, match="^pruning.prunable: "):
    lottery.run(tiny_config(**{"pruning.prunable": ("conv.*",)}),
                tmp_path / "b")
  with pytest.raises(lottery.LotteryError, match="^pruning.layer_fractions: "):
    lottery.run(tiny_config(**{"pruning.layer_fractions": "fc9/kernel=0.1"}),
                tmp_path / "c")
  with pytest.raises(lottery.LotteryError, match="^training.weight_decay_on: "
                     r"patterns \('conv.\*',\) match no parameter"):
    lottery.run(tiny_config(**{"training.weight_decay": 1e-4,
                               "training.weight_decay_on": ("conv.*",)}),
                tmp_path / "d")
  assert not any((tmp_path / w).exists() for w in "abcd")


@pytest.mark.parametrize("changes, message", [
    ({"data.name": "mnist1d"}, "data.path: is read for data.name 'npz' or "
     "'images', not 'mnist1d': leave it '' (got '{path}')"),
    ({"data.data_dir": "/nowhere"}, "data.data_dir: is TFDS's data_dir, and "
     "data.name 'npz' is not a TFDS dataset: leave it '' (got '/nowhere')"),
    ({"data.image_size": 32}, "data.image_size: is the side of the crops of "
     "data.crop='inception', and data.crop is 'none' (got 32)"),
    ({"data.source": "stream", "data.on_device": False}, "data.on_device: "
     "places an in-memory training set (data.source='memory'); streamed "
     "batches go to the devices as they are read (got False)"),
    ({"pruning.path_points": 5}, "pruning.path_points: is read by "
     "pruning.level_barrier and pruning.stability_every, which are both off "
     "(got 5)"),
    ({"training.weight_decay_on": (".*kernel",)}, "training.weight_decay_on: "
     "is read with training.weight_decay > 0, and it is 0 (got ('.*kernel',))"),
    ({"method": "sparse", "sparse.methods": ("static",), "sparse.n_m": "1:4"},
     "sparse.n_m: is read by methods ['nm', 'sr_ste'], which sparse.methods "
     "does not name (got '1:4')"),
    ({"training.momentum": 0.9}, "training.momentum: is SGD's, and "
     "training.optimizer is 'adam' (got 0.9)"),
    ({"training.optimizer": "sgd", "training.nesterov": True},
     "training.nesterov: is SGD's with training.momentum > 0 "
     "(training.optimizer 'sgd', momentum 0) (got True)"),
    ({"training.lr_boundaries": [10]}, "training.lr_boundaries: is read by "
     "training.schedule='step', and it is 'constant' (got (10,))"),
    ({"training.schedule": "cosine", "training.lr_decay": 0.5},
     "training.lr_decay: is read by training.schedule='step', and it is "
     "'cosine' (got 0.5)"),
    ({"pruning.batch_size": 7}, "pruning.batch_size: is read by "
     "pruning.group_score='taylor', and it is 'sum' (got 7)"),
])
def test_a_field_that_would_be_ignored_is_refused(npz_path, changes,
                                                  message):
  """Set away from its default where nothing reads it, a field is refused
  (as another method's field is), not silently ignored."""
  cfg = config_from_dict(npz_path, {})
  for key, value in changes.items():
    node = cfg
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  with pytest.raises(lottery.LotteryError) as e:
    config_lib.validate(cfg)
  assert str(e.value) == message.format(path=npz_path)


def test_a_run_saved_with_an_unread_field_resumes(tiny_config, tmp_path,
                                                  monkeypatch):
  """A run written before the rule that refuses an unread value (here
  pruning.path_points=10 without barriers) is the same run as the config
  without it: it resumes and extends."""
  from lottery import imp  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(imp, "PATH_POINTS", 10)  # The rule lets 10 pass.
  old = tiny_config(**{"pruning.rounds": 1, "pruning.path_points": 10})
  lottery.run(old, tmp_path, log=lambda _: None)
  monkeypatch.undo()
  with pytest.raises(lottery.LotteryError, match="^pruning.path_points: "):
    config_lib.validate(old)
  # Its saved config, loaded, reads the field at its default: it runs again
  # as is (load_config's promise).
  loaded = lottery.load_config(tmp_path)
  assert loaded.pruning.path_points == imp.PATH_POINTS != 10
  assert lottery.run(loaded, tmp_path, log=lambda _: None)["finished"]
  summary = lottery.run(tiny_config(**{"pruning.rounds": 2}), tmp_path,
                        log=lambda _: None)
  assert [r["round"] for r in summary["rounds"]] == [0, 1, 2]
  # A value that is read still makes another run.
  with pytest.raises(lottery.LotteryError, match=r"^config: .*"
                     r"pruning.fraction: 0.5 -> 0.25"):
    lottery.run(tiny_config(**{"pruning.rounds": 2,
                               "pruning.fraction": 0.25}), tmp_path)


def test_stability_source_workdir_needs_a_ticket_source(tiny_config,
                                                        tmp_path):
  cfg = tiny_config(method="stability", **{
      "stability.steps": (0,), "stability.source_workdir": str(tmp_path)})
  with pytest.raises(lottery.LotteryError) as e:
    lottery.driver.run(cfg, tmp_path / "wd")
  assert str(e.value) == (
      "stability.source_workdir: no source names a ticket of it "
      "(stability.sources=('dense',)); add their coordinates, e.g. "
      f"'round=4', or leave it '' (got {str(tmp_path)!r})")
  assert not (tmp_path / "wd").exists()


def test_rewind_step_only_with_rewind(tiny_config):
  cfg = tiny_config(**{"pruning.reset": "finetune", "pruning.rewind_step": 3})
  with pytest.raises(lottery.LotteryError, match="^pruning.rewind_step: "):
    config_lib.validate(cfg)


def test_every_recipe_config_is_valid():
  import importlib.util  # pylint: disable=g-import-not-at-top
  for path in sorted((ROOT / "configs").glob("*.py")):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    args = getattr(mod, "ARGS", ("",))
    for arg in args:
      config_lib.validate(mod.get_config(arg))
    assert mod.__doc__ and "python -m experiments." in mod.__doc__, path


def test_every_schema_field_has_a_rule():
  fields = config_lib.schema_fields()
  assert "training.learning_rate" in fields and "controls" in fields
  assert not set(fields) - set(config_lib.RULES), (
      "fields of base_config() without a rule in lottery.config.RULES")


def test_added_fields_have_rules_before_the_schema_has_them():
  # The lead adds these to base_config(); their rules are ready.
  rules = config_lib.RULES
  values = {"data.augment": "none", "model.depth": 0, "model.width": 0,
            "training.loop": "scan", "training.replicas": "vmap"}
  for name, ok in values.items():
    rules[name](name, ok, {})
  for name, bad in [("data.augment", "mixup"), ("model.depth", -1),
                    ("model.width", 2.0), ("training.loop", "vmap"),
                    ("training.replicas", "pmap")]:
    with pytest.raises(lottery.LotteryError, match=f"^{name}: "):
      rules[name](name, bad, {})


def test_a_block_registered_again_is_replaced_but_not_the_frameworks(
    request):
  def forget():
    for table in (config_lib._BLOCKS, config_lib._OWNERS):
      table.pop("mine_again", None)
    for table in (config_lib.RULES, config_lib.FIELD_HELP):
      for k in [k for k in table if k.startswith("mine_again.")]:
        del table[k]
  request.addfinalizer(forget)
  # Before it is registered (a plug-in not imported): named so.
  c = lottery.base_config()
  with pytest.raises(lottery.LotteryError, match=r"^config: no field "
                     r"'mine_again' \(a block of your own\? import the "
                     r"module that registers it first\)$"):
    config_lib.validate(ml_collections.ConfigDict(
        {**c.to_dict(), "mine_again": {"steps": 1}}))
  for steps, rate in ((10, None), (20, 0.5)):  # A cell run twice, edited.
    fields = {"steps": steps, **({"rate": rate} if rate else {})}
    config_lib.register_block(
        "mine_again", fields,
        rules={f"mine_again.{k}": config_lib.count(1) if k == "steps" else
               (lambda f, v, c: config_lib.check_real(
                   f, v, 0, 1, lo_open=True, hi_open=False))
               for k in fields},
        help={f"mine_again.{k}": k for k in fields})
  assert lottery.base_config().mine_again.to_dict() == {"steps": 20,
                                                        "rate": 0.5}
  assert sorted(k for k in config_lib.RULES if k.startswith("mine_again")) == [
      "mine_again.rate", "mine_again.steps"]
  c = lottery.base_config()
  c.mine_again.rate = 1.5
  with pytest.raises(lottery.LotteryError, match=r"^mine_again.rate: must be "
                     r"in \(0, 1\] \(got 1.5\)$"):
    config_lib.validate(c)
  # The framework's blocks are its own.
  with pytest.raises(lottery.LotteryError, match=r"^config: cannot register "
                     r"block 'pai': it is lottery.pai's; choose another name"):
    config_lib.register_block("pai", {"x": 1}, rules={}, help={})
  assert "methods" in lottery.base_config().pai


def test_good_config_and_rules_dont_mutate(npz_path):
  cfg = config_from_dict(npz_path, {"training.learning_rate": 1,
                                    "training.schedule": "step",
                                    "training.lr_boundaries": [5, 10],
                                    "controls": ["reinit"]})
  before = cfg.to_json()
  config_lib.validate(cfg)
  assert cfg.to_json() == before


def test_missing_field_named(npz_path):
  d = config_from_dict(npz_path, {}).to_dict()
  del d["seeds"]["init"]
  with pytest.raises(lottery.LotteryError, match=r"^seeds.init: missing"):
    config_lib.validate(ml_collections.ConfigDict(d))


def test_sparse_end_step_must_be_a_multiple_of_update_every():
  c = lottery.base_config()
  c.sparse.update(update_every=25, end_step=130)
  with pytest.raises(lottery.LotteryError) as e:
    config_lib.validate(c)
  assert str(e.value) == (
      "sparse.end_step: must be a multiple of sparse.update_every=25, where "
      "GMP's mask updates happen (e.g. 125 or 150) (got 130)")
  c.sparse.update(end_step=10)
  with pytest.raises(lottery.LotteryError, match=r"\(e\.g\. 25\) \(got 10\)$"):
    config_lib.validate(c)
  c.sparse.update(end_step=125)
  config_lib.validate(c)
  c.sparse.update(end_step=0)  # end_fraction x training.steps
  config_lib.validate(c)
  # Only GMP reads it.
  c.sparse.update(end_step=130, methods=("static", "rigl"))
  config_lib.validate(c)


def _run_cli(*args, cwd=ROOT):
  env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
  return subprocess.run([sys.executable, "-m", "experiments.imp", *args],
                        cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=120)


def test_cli_bad_value_prints_one_line(tmp_path):
  res = _run_cli(f"--workdir={tmp_path / 'wd'}",
                 "--config.pruning.fraction=1.5")
  assert res.returncode == 1
  assert res.stderr.strip().splitlines()[-1] == (
      "error: pruning.fraction: must be in (0, 1) (got 1.5)")
  assert "Traceback" not in res.stderr
  assert not (tmp_path / "wd").exists()


def test_cli_mismatched_workdir_prints_one_line(npz_path, tmp_path):
  common = [f"--workdir={tmp_path}", "--config=configs/mnist1d.py:quick",
            "--config.data.name=npz", f"--config.data.path={npz_path}",
            "--config.model.name=mlp_tiny", "--config.training.batch_size=16",
            "--config.pruning.rounds=0", "--config.training.steps=10"]
  assert _run_cli(*common).returncode == 0
  res = _run_cli(*common, "--config.training.learning_rate=0.5")
  assert res.returncode == 1
  last = res.stderr.strip().splitlines()[-1]
  assert last.startswith("error: config: workdir ")
  assert "training.learning_rate: 0.02 -> 0.5" in last
  assert "Traceback" not in res.stderr


def test_cli_missing_tfds_dataset_prints_one_line(tmp_path):
  res = _run_cli(f"--workdir={tmp_path / 'wd'}",
                 "--config=configs/lenet_mnist.py",
                 f"--config.data.data_dir={tmp_path / 'no_data'}")
  assert res.returncode == 1
  last = res.stderr.strip().splitlines()[-1]
  assert last.startswith("error: data.data_dir: TFDS dataset 'mnist' is not "
                         "prepared")
  assert "tfds build mnist" in last
  assert "Traceback" not in res.stderr

"""Config validation and the entry point's one-line errors."""

import os
import pathlib
import subprocess
import sys

import pytest

import lottery
from lottery import config as config_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]


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
    ("controls", ("reinit", "shuffle"), "controls"),
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


def test_checks_that_need_the_data_or_model(tiny_config, tmp_path):
  with pytest.raises(lottery.LotteryError, match="^training.batch_size: 512"):
    lottery.run(tiny_config(**{"training.batch_size": 512}), tmp_path / "a")
  with pytest.raises(lottery.LotteryError, match="^pruning.prunable: "):
    lottery.run(tiny_config(**{"pruning.prunable": ("conv.*",)}),
                tmp_path / "b")
  with pytest.raises(lottery.LotteryError, match="^pruning.layer_fractions: "):
    lottery.run(tiny_config(**{"pruning.layer_fractions": "fc9/kernel=0.1"}),
                tmp_path / "c")


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

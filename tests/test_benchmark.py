"""The benchmark script runs and ends with its JSON line."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Second tier: the benchmark script in a subprocess.
pytestmark = pytest.mark.slow


def test_benchmark_prints_json_last():
  env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
  res = subprocess.run(
      [sys.executable, "-m", "experiments.benchmark", "--steps=5",
       "--repeats=2", "--models=lenet,conv2,cnn1d,seeds,stability,stream",
       "--image_size=8", "--eval_examples=500",
       "--resnet_path_examples=128"], cwd=ROOT, env=env, capture_output=True,
      text=True,
      timeout=300)
  assert res.returncode == 0, res.stderr
  result = json.loads(res.stdout.strip().splitlines()[-1])
  assert result["masked_steps_per_s"] > 0 and result["dense_steps_per_s"] > 0
  # The rates are printed to 4 significant digits; the ratio from unrounded.
  ratio = result["masked_steps_per_s"] / result["dense_steps_per_s"]
  assert abs(result["ratio"] - ratio) < 1e-2
  assert result["model"] == "lenet_300_100" and result["batch_size"] == 60
  for name in ("conv2", "cnn1d"):
    for key in ("masked_steps_per_s", "dense_steps_per_s",
                "python_loop_steps_per_s", "scan_steps_per_s",
                "scan_vs_python_loop"):
      assert result[f"{name}_{key}"] > 0, (name, key)
    assert result[f"{name}_loop"] == "scan"  # 'auto', on every platform
  assert result["seeds_1_steps_per_s"] > 0 and result["seeds_8_steps_per_s"] > 0
  assert abs(result["seeds_8_vs_1"] - result["seeds_8_steps_per_s"]
             / result["seeds_1_steps_per_s"]) < 1e-2
  # The stability analysis: the 30-point path against 30 evaluations, the
  # pair as replicates against two trainings.
  assert result["path_30_s"] > 0 and result["separate_30_s"] > 0
  assert abs(result["path_30_vs_separate"] - result["path_30_s"]
             / result["separate_30_s"]) < 1e-2
  assert result["pair_vs_two"] > 0
  # The pair split over 2 host devices (a child process) against one copy.
  assert result["host_devices"] == 2
  assert result["pair_vs_two_host_devices"] == pytest.approx(
      result["host_devices_1_steps_per_s"]
      / result["host_devices_2_steps_per_s"], rel=1e-2)
  # ResNet-20's path, its BatchNorm statistics recomputed at every point,
  # one point a step; LeNet's in one vmap.
  assert result["resnet20_path_30_s"] > 0
  assert result["resnet20_path_examples"] == 128
  assert result["resnet20_path_batch"] == 1 and result["path_batch"] == 30
  # MNIST-1D's loop with batches streamed from record files vs in memory.
  assert result["stream_memory_steps_per_s"] > 0
  assert abs(result["stream_vs_memory"] - result["stream_stream_steps_per_s"]
             / result["stream_memory_steps_per_s"]) < 1e-2
  # Sparse training: a static mask and RigL (updates every 100 steps).
  assert result["static_steps_per_s"] > 0 and result["rigl_steps_per_s"] > 0
  ratio = result["rigl_steps_per_s"] / result["static_steps_per_s"]
  assert abs(result["rigl_vs_static"] - ratio) < 1e-2


def test_benchmark_resnet20_against_torch():
  env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
  res = subprocess.run(
      [sys.executable, "-m", "experiments.benchmark", "--steps=5",
       "--repeats=1", "--models=torch", "--image_size=8"], cwd=ROOT, env=env,
      capture_output=True, text=True, timeout=300)
  assert res.returncode == 0, res.stderr
  result = json.loads(res.stdout.strip().splitlines()[-1])
  assert result["resnet20_ours_steps_per_s"] > 0
  assert result["resnet20_ours_loop"] == "scan"
  try:
    import torch  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    assert result["resnet20_torch_steps_per_s"] is None
    return
  ratio = (result["resnet20_ours_steps_per_s"] /
           result["resnet20_torch_steps_per_s"])
  assert abs(result["resnet20_vs_torch"] - ratio) < 1e-2 * ratio

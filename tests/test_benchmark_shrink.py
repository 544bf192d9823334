"""experiments.benchmark_shrink: counts, FLOPs and timings of dense, masked
and shrunk networks."""

import pytest

from experiments import benchmark_shrink


def test_the_mnist1d_mlp_at_half_its_units():
  out = benchmark_shrink.measure(names=("mnist1d_mlp",), sparsities=(0.5,),
                                 repeats=1)
  # 40 -> 500 -> 500 (residual) -> 10; half the stream's units removed.
  assert out["mnist1d_mlp_50_params_dense"] == (40 * 500 + 500 + 500 * 500 +
                                                500 + 500 * 10 + 10)
  assert out["mnist1d_mlp_50_params_shrunk"] == (40 * 250 + 250 + 250 * 250 +
                                                 250 + 250 * 10 + 10)
  # The masked net keeps the removed units' biases.
  assert (out["mnist1d_mlp_50_params_masked"] ==
          out["mnist1d_mlp_50_params_shrunk"] + 2 * 250)
  # FLOPs are the kernels' multiply-adds, plus elementwise work.
  assert out["mnist1d_mlp_50_flops_dense"] >= 2 * 256 * 275_000
  assert out["mnist1d_mlp_50_flop_reduction"] == pytest.approx(
      275_000 / 75_000, rel=0.05)
  for b in (1, 256):
    for v in ("dense", "masked", "shrunk"):
      assert out[f"mnist1d_mlp_50_ms_b{b}_{v}"] > 0
  assert out["mnist1d_mlp_50_speedup_vs_flops"] == pytest.approx(
      out["mnist1d_mlp_50_speedup_b256"] /
      out["mnist1d_mlp_50_flop_reduction"], rel=0.01)


@pytest.mark.slow
def test_resnet50_row_shrinks_inner_channels_and_streams():
  out = benchmark_shrink.measure(names=("resnet50",), sparsities=(0.75,),
                                 repeats=1)
  # Width 16 (streams 16, 64, 128, 256, 512), 10 classes.
  assert out["resnet50_75_params_dense"] == 1_486_106
  assert (out["resnet50_75_params_shrunk"] <
          out["resnet50_75_params_masked"] <
          out["resnet50_75_params_dense"] / 8)
  # A quarter of every set's channels: about 1/16 of the FLOPs.
  assert 10 < out["resnet50_75_flop_reduction"] < 16
  for b in (1, 256):
    for v in ("dense", "masked", "shrunk"):
      assert out[f"resnet50_75_ms_b{b}_{v}"] > 0


@pytest.mark.slow
def test_measure_tickets_exports_and_times_a_runs_tickets(npz_path, tmp_path):
  import lottery  # pylint: disable=g-import-not-at-top
  from conftest import quiet, tiny  # pylint: disable=g-import-not-at-top
  cfg = tiny(npz_path, **{"pruning.structure": "neuron", "pruning.rounds": 1,
                          "controls": ()})
  lottery.run(cfg, tmp_path / "wd", log=quiet)
  out = benchmark_shrink.measure_tickets(tmp_path / "wd", (0, 1), (8,),
                                         repeats=1)
  # mlp_tiny: 8 -> 32 -> 3; round 1 keeps 16 of the 32 units.
  assert out["0_widths"] == [32] and out["1_widths"] == [16]
  assert out["0_params_shrunk"] == out["1_params_dense"] == (
      8 * 32 + 32 + 32 * 3 + 3)
  assert out["1_params_shrunk"] == 8 * 16 + 16 + 16 * 3 + 3
  for b in (1, 256):
    assert out[f"1_ms_b{b}_dense"] > 0 and out[f"1_ms_b{b}_shrunk"] > 0

"""experiments.benchmark_stream: peak host memory of runs on a dataset at 1x
and 4x its size."""

import pytest

from experiments import benchmark_stream


def test_peak_memory_is_each_childs_own():
  big = benchmark_stream.peak_rss_mb("b = b'x' * 300_000_000")
  # After the big child, a small one reports its own peak: not the largest
  # of all children's (RUSAGE_CHILDREN), nor the memory of this process,
  # which it was forked from (its ru_maxrss).
  small = benchmark_stream.peak_rss_mb("pass")
  assert 300 <= big < 330 and small < 30
  with pytest.raises(RuntimeError, match="ZeroDivisionError"):
    benchmark_stream.peak_rss_mb("1 / 0")


@pytest.mark.slow
def test_runs_at_two_sizes_report_their_peaks():
  out = benchmark_stream.measure(scales=(1, 2), steps=2, images=36,
                                 arrays=120)
  for v in ("images_stream", "arrays_memory", "arrays_stream"):
    for s in (1, 2):
      assert out[f"rss_{v}_{s}x_mb"] > 100  # JAX alone takes more.
    assert out[f"rss_{v}_2x_vs_1x"] == pytest.approx(
        out[f"rss_{v}_2x_mb"] / out[f"rss_{v}_1x_mb"], abs=2e-3)
  assert out["rss_images_2x_dataset_mb"] > out["rss_images_1x_dataset_mb"] > 0
  assert out["rss_arrays_2x_dataset_mb"] > out["rss_arrays_1x_dataset_mb"] > 0
  assert out["rss_steps"] == 2


@pytest.mark.slow
def test_growth_reports_memory_after_every_chunk():
  out = benchmark_stream.growth(steps=6, eval_every=2, arrays=120)
  for source in ("memory", "stream"):
    after = out[f"rss_growth_{source}_mb"]
    assert len(after) == 3 and min(after) > 100  # JAX alone takes more.
    assert out[f"rss_growth_{source}_peak_mb"] >= max(after) - 1
  assert (out["rss_growth_steps"], out["rss_growth_eval_every"]) == (6, 2)

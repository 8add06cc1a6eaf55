"""The shared figure helper: diverged seeds are left out and counted."""

import numpy as np

from dynamics import plots


def test_diverged_seeds_are_left_out_and_counted():
  t = np.linspace(0, 1, 11)
  sim = np.tile(np.exp(-t), (4, 1))
  sim[1] *= 3.0
  sim[1, 5:] = np.nan  # masked after it diverged
  fig, (ax,) = plots.figure()
  plots.trajectories(ax, t, sim, np.exp(-t), label="loss")
  mean = ax.lines[0]
  assert mean.get_label() == "loss (1 of 4 diverged, left out)"
  np.testing.assert_allclose(mean.get_ydata(), np.exp(-t))  # the three kept seeds only
  assert len(ax.collections[0].get_segments()) == 3
  import matplotlib.pyplot as plt
  plt.close(fig)


def test_log_axes_label_powers_of_ten_only(tmp_path):
  from matplotlib.ticker import NullFormatter
  t = np.linspace(20, 400, 20)
  fig, (ax,) = plots.figure()
  plots.trajectories(ax, t, np.tile(1 / t, (2, 1)), log=True)
  ax.set_xscale("log")
  plots.save(fig, str(tmp_path / "f.png"))
  assert isinstance(ax.xaxis.get_minor_formatter(), NullFormatter)  # 20..400: minors unlabelled
  assert (tmp_path / "f.png").exists()

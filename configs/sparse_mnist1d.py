"""Sparse training on MNIST-1D: static, SET, RigL and GMP at 10% and 3%
density, uniform and ERK, with a dense baseline (the default of
`python -m experiments.sparse`).

The MLP, data and optimizer of configs/mnist1d.py (40-500-(residual
500-500)-10, Adam 2e-2, batch 100, 1500 steps); the three kernels are sparse,
the biases dense. Mask updates every 100 steps (Evci et al. 2020's dT), drop
fraction 0.3 cosine-annealed to 0 at 75% of training (SET and RigL alike, as
the RigL paper runs every dynamic method); GMP prunes from dense at step 0 to
the target at step 1100 (the last update before 75% of training).

Command (3 replicates in one program; 2 minutes on the idle 2-core CPU):
  python -m experiments.sparse --workdir=/tmp/lottery_runs/sparse \\
      --config.seeds.num=3
Quick variant (seconds):
  python -m experiments.sparse --config=sparse_mnist1d:quick --workdir=...

N:M variant (`:n_m`; `:n_m,quick` runs in seconds): 2:4 on every kernel, static
(a random 2:4 mask), 'nm' (RigL within each run of 4) and SR-STE ('sr_ste',
Zhou et al. 2021) at density 0.5, uniform, trained as the paper trains: SGD
with momentum 0.9 (here at 0.05, constant, 1500 steps, batch 100):
  python -m experiments.sparse --config=sparse_mnist1d:n_m --workdir=... \
      --config.seeds.num=3
Zhou et al. report 2:4 networks trained by SR-STE "without performance drop"
(their repository: ResNet-50 at 2:4, 77.0% top-1 on ImageNet). Measured here
(docs/structured.md, 3 replicates, test accuracy %): dense 68.4, SR-STE 69.1,
static 66.0, nm 66.6.

':cnn' (':cnn,quick') trains the MNIST-1D CNN (configs/mnist1d.py:cnn's
model and training: Adam 1e-2, 4000 steps) sparse at 40.96%, 16.78% and
6.87% (0.8^4, 0.8^8, 0.8^12: that recipe's IMP rounds 4, 8 and 12 hold
40.96%, 16.76% and 6.89% after per-layer rounding); GMP reaches them at step
2900 (a shorter run needs --config.sparse.end_step below its steps). Measured (docs/results.md, seeds 0-2, ERK, 16.8% / 6.9%):
GMP 87.3 / 62.5, RigL 85.1 / 69.5, SET 80.3 / 45.5, static 58.1 / 27.2.

Expected (the literature, at equal density): RigL >= SET >= static (Evci et
al. 2020, Fig. 2 and 4), ERK >= uniform, and gradual magnitude pruning (which
trains dense first) a strong baseline. Measured here (docs/results.md, 3
replicates, test accuracy %): dense 66.3; RigL 77.2 / 72.6 (uniform 10% / 3%)
and 73.2 / 75.0 (ERK); SET 75.5 / 58.3 and 70.2 / 73.5; static 69.8 / 46.5
and 71.8 / 67.8; GMP 66.9 / 53.5 and 66.3 / 70.5.
"""

from configs import mnist1d
from lottery.config import base_config

ARGS = ("", "quick", "n_m", "n_m,quick", "cnn", "cnn,quick")


def get_config(arg: str = ""):
  c = base_config()
  c.method = "sparse"
  c.data.name = "mnist1d"
  c.model.name = "mnist1d_mlp"
  c.training.update(steps=1500, batch_size=100, optimizer="adam",
                    learning_rate=2e-2, eval_every=100, checkpoint_every=500)
  c.pruning.prunable = (".*kernel",)
  c.sparse.update(methods=("static", "set", "rigl", "gmp"),
                  densities=(0.1, 0.03), distribution=("uniform", "erk"),
                  update_every=100, drop_fraction=0.3, end_fraction=0.75,
                  begin_step=0, end_step=1100)
  if arg not in ARGS:
    raise ValueError(f"unknown config argument {arg!r} (known: {ARGS})")
  parts = arg.split(",") if arg else []
  if "cnn" in parts:
    # configs/mnist1d.py:cnn's model and training, at the densities of its
    # IMP rounds 4, 8 and 12; updates every 100 steps to 75% of training
    # (GMP's last at step 2900).
    mnist1d.use_cnn(c)
    c.sparse.update(densities=mnist1d.CNN_DENSITIES, end_step=2900)
  if "n_m" in parts:
    c.training.update(optimizer="sgd", momentum=0.9, learning_rate=0.05)
    c.sparse.update(methods=("static", "nm", "sr_ste"), densities=(0.5,),
                    distribution=("uniform",), n_m="2:4",
                    sr_ste_decay=2e-4)
  if "quick" in parts:
    c.training.update(steps=200, eval_every=50, checkpoint_every=100)
    c.sparse.update(update_every=25, end_step=125)
    if "n_m" not in parts:
      c.sparse.update(densities=c.sparse.densities[:1])
  return c

"""ResNet-20 on CIFAR-10: 2:4 sparsity after dense training, then retraining,
after Mishra et al. 2021 ("Accelerating Sparse Deep Neural Networks",
arXiv:2104.08378, NVIDIA).

Round 0 trains the dense network (the ResNet-20 recipe of
configs/resnet20_cifar10.py: SGD 0.1, momentum 0.9, weight decay 1e-4, batch
128, 63K iterations, rate x0.1 at 32K and 48K, crops and flips). Round 1
keeps the 2 largest of every 4 consecutive weights along each kernel's input
axis (`pruning.structure='2:4'`: density exactly 50%) and retrains from the
trained weights with the whole schedule again (`pruning.reset='lr_rewind'`),
as the paper's recipe repeats the dense training's schedule. The first conv
(3 input channels: no groups of 4) stays dense, as in the paper.
`lottery.n_m.pack` turns each pruned kernel into the compressed layout of
sparse tensor cores (values and 2-bit positions, here uint8).

Needs CIFAR-10 prepared for TFDS (see the README):
  python -m experiments.imp --config=configs/nm_resnet20_cifar10.py \\
      --config.data.data_dir=$HOME/tensorflow_datasets --workdir=/tmp/nm20
Quick variant (seconds, any 32x32x3 data, e.g. --config.data.name=npz):
  python -m experiments.imp --config=configs/nm_resnet20_cifar10.py:quick ...

Expected (paper; NVIDIA A100 sparse tensor cores; ≈ recalled): across ~30
vision and language networks, 2:4 after dense training plus retraining
matches dense accuracy (e.g. ResNet-50 on ImageNet ≈76.1 dense, ≈76.2 2:4;
no ResNet-20 in the paper); 2:4 doubles the tensor cores' math throughput,
≈1.3-1.5x faster end to end. So: round 1 within noise of round 0 (dense
≈91.7%). Not measured here: a 63K-step round takes about a day on a 2-core
CPU, and no N:M kernel runs on a CPU (see docs/performance.md).
"""

from configs import resnet20_cifar10

ARGS = ("", "quick")


def get_config(arg: str = ""):
  if arg not in ARGS:
    raise ValueError(f"unknown config argument {arg!r} (known: 'quick')")
  c = resnet20_cifar10.get_config(arg)  # Its model, data and training.
  # Every kernel but the first conv's (3 input channels).
  c.pruning.update(rounds=1, scope="layerwise",
                   prunable=(r"stage.*/kernel", "out/kernel"),
                   reset="lr_rewind", rewind_step=0, structure="2:4")
  c.controls = ()
  return c

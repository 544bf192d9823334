"""ResNet-50 on ImageNet: IMP with rewinding, Frankle et al. 2020 (LMC paper).

The paper's ImageNet recipe (its Table 1, ≈ where read from secondary
sources): ResNet-50 (25.5M parameters, BatchNorm), 90 epochs at batch 1024
(112,603 steps of the 1,281,167 training images), SGD with momentum 0.9,
weight decay 1e-4, learning rate 0.4 after a linear warm-up of 5 epochs,
x0.1 at epochs 30, 60 and 80; the standard random-resized crops and flips
for training and central 224 of 256 crops for evaluation, decoded and
cropped on the host as the batches are streamed (data.crop='inception',
see docs/data.md); global magnitude pruning of every conv and dense kernel,
20% per round; weights rewound to epoch 6 (step 7,507) of the dense run
(`:k0` rewinds to initialization, the original lottery ticket, which does
not match at this scale; --config.pruning.rewind_step=STEP picks any step).
Six rounds end at 26.2% of the weights (round 5: 32.8%), around the
paper's 30% density (≈).

Needs ImageNet prepared for TFDS in array_record format (docs/data.md):
  python -m experiments.imp --config=imp_resnet50_imagenet \\
      --config.data.data_dir=DIR --workdir=/tmp/imp50
Quick variant (32x32 crops, a width-4 ResNet-50, 10 steps of 8, on mock TFDS
data or any images: --config.data.name=images --config.data.path=FOLDER;
1.5-4.5 minutes on the loaded 2-core CPU of the tests, mostly compiling):
  python -m experiments.imp --config=imp_resnet50_imagenet:quick ...

Expected (paper, top-1): dense 76.1 ± 0.1; IMP rewound to epoch ~6 finds
matching subnetworks (within 0.2 points of dense) at 30% density; rewound
to initialization it does not (≈). The paper trained on Google Cloud TPUs;
each round here is a full 90-epoch run (and each control another): not run
here, use accelerators and a host whose cores decode and crop images as
fast as the accelerators train on them (docs/data.md).
"""

from lottery.config import base_config

ARGS = ("", "k0", "quick")

STEPS_PER_EPOCH = 1_281_167 / 1024


def _epoch(e: float) -> int:
  return round(e * STEPS_PER_EPOCH)


def get_config(arg: str = ""):
  c = base_config()
  c.data.update(name="imagenet2012", source="stream", crop="inception",
                image_size=224)
  c.model.name = "resnet50"
  c.training.update(
      steps=_epoch(90), batch_size=1024, optimizer="sgd", learning_rate=0.4,
      momentum=0.9, weight_decay=1e-4, schedule="step",
      lr_boundaries=tuple(_epoch(e) for e in (30, 60, 80)), lr_decay=0.1,
      warmup_steps=_epoch(5), eval_every=5_000, checkpoint_every=2_500)
  c.pruning.update(fraction=0.2, rounds=6, scope="global",
                   prunable=(".*kernel",), layer_fractions="",
                   reset="rewind", rewind_step=_epoch(6))
  c.controls_every = 6  # Each control is a full 90-epoch run: the last round.
  if arg == "quick":
    c.data.image_size = 32
    c.model.width = 4
    c.training.update(steps=10, batch_size=8, lr_boundaries=(5,),
                      warmup_steps=2, eval_every=5, checkpoint_every=5)
    c.pruning.update(rounds=1, rewind_step=5)
    c.controls = ()
  elif arg == "k0":
    c.pruning.rewind_step = 0
  elif arg:
    raise ValueError(f"unknown config argument {arg!r} (known: {ARGS})")
  return c

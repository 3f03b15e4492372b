"""TSPR settings, with the defaults of the authors' training command.

Sources (nnaisense/conditional-style-transfer): the README's training command (`--knn=5 --lr=4e-4
--batch_size=2 --fineSize=256 --loadSize=286 --niter=50 --niter_decay=150 --peer_reg=bidir
--lambda_idt=25 --ml_margin=1.0`, other lambdas 1.0, `--netD=disc_noisy`), `options/*.py` (ngf/ndf 64,
`D_noise_mag` 0.1, beta1 0.5, pool 50) and `models/networks.py` (6 residual blocks, two downsamplings,
content 4*ngf and style 8*ngf latent channels, attention dropout 0.2).
"""
import dataclasses
from typing import Optional


@dataclasses.dataclass(frozen=True)
class TSPRConfig:
  """Architecture, loss and optimiser settings (every field is a `--set key=value` override).

  Architecture (`models/networks.py`):
    ngf: generator base width; content codes have 4*ngf channels, style codes 8*ngf (256/512 at 64).
    ndf: discriminator base width.
    n_blocks: residual blocks in the encoder and in each decoder.
    global_style: split the style code into a global half (three stride-2 convs, spatial mean,
      broadcast) and a local half (the reference's default; `--no_global_style` turns it off).
    knn: neighbours per latent position in peer regularization.
    peer_reg: 'bidir' (two stages) or 'basic' (style stage only).
    att_dropout: attention dropout in peer regularization.
    knn_chunk: query rows per distance-matrix chunk (memory bound for large images).
    d_noise: std of the Gaussian noise added to the discriminator input (`disc_noisy`).
    main_from_aux: initialise the main decoder with the auxiliary decoder's weights (the phase split
      of the paper; the official code draws both independently).
  Losses (`models/gan_aux_model.py`):
    lambda_gen, lambda_disc, lambda_style, lambda_cont, lambda_idt, lambda_idt_aux,
    lambda_cycle_aux, lambda_transf: loss weights; ml_margin: metric-learning margin.
  Optimisation (three Adams: auxiliary, main, discriminator):
    lr, beta1, beta2; lr is constant for `niter` epochs and decays linearly over `niter_decay`
    epochs of `epoch_size` images (the reference dataset's `__len__` is 6144 pairs).
    pool_size: image-history buffer of the discriminator (CycleGAN's ImagePool, 50); 0 disables it.
  Data:
    load_size_ratio: crops of `image_size` are taken from images whose shorter side is
      `ratio * image_size` (286/256). The reference's extra 0.9-1.1 scale and 0.05 colour jitter are
      not reproduced (the shared data pipeline does crops and flips).
  Inference:
    stylize_content / stylize_style: stage switches (the reference's `cont_transf`/`style_transf`).
    pad: reflection padding (pixels at 256 px; scaled with the image, `8 * (size // 256)` in
      `test.py`) added around the content before stylizing and cropped afterwards.
  """
  ngf: int = 64
  ndf: int = 64
  n_blocks: int = 6
  global_style: bool = True
  knn: int = 5
  peer_reg: str = "bidir"
  att_dropout: float = 0.2
  knn_chunk: int = 4096
  d_noise: float = 0.1
  main_from_aux: bool = True

  lambda_gen: float = 1.0
  lambda_disc: float = 1.0
  lambda_style: float = 1.0
  lambda_cont: float = 1.0
  lambda_idt: float = 25.0
  lambda_idt_aux: float = 1.0
  lambda_cycle_aux: float = 1.0
  lambda_transf: float = 1.0
  ml_margin: float = 1.0

  lr: float = 4e-4
  beta1: float = 0.5
  beta2: float = 0.999
  niter: int = 50
  niter_decay: int = 150
  epoch_size: int = 6144
  pool_size: int = 50

  load_size_ratio: float = 286 / 256

  stylize_content: bool = True
  stylize_style: bool = True
  pad: int = 8

  @property
  def content_channels(self) -> int:
    return 4 * self.ngf

  @property
  def style_channels(self) -> int:
    return 8 * self.ngf


def validate(config: TSPRConfig, image_size: Optional[int] = None) -> TSPRConfig:
  """Raises ConfigError for settings the model cannot run with."""
  from jaxstyle.errors import ConfigError  # pylint: disable=g-import-not-at-top
  if config.peer_reg not in ("bidir", "basic"):
    raise ConfigError(f"tspr peer_reg must be 'bidir' or 'basic', got {config.peer_reg!r}")
  for name in ("ngf", "ndf", "knn", "knn_chunk", "epoch_size"):
    if getattr(config, name) < 1:
      raise ConfigError(f"tspr {name} must be positive, got {getattr(config, name)}")
  if config.ngf % 4:
    raise ConfigError(f"tspr ngf must be a multiple of 4 (attention MLP widths d/2, d/4), got {config.ngf}")
  for name in ("n_blocks", "pool_size", "niter", "niter_decay", "pad"):
    if getattr(config, name) < 0:
      raise ConfigError(f"tspr {name} must be >= 0, got {getattr(config, name)}")
  if not 0.0 <= config.att_dropout < 1.0:
    raise ConfigError(f"tspr att_dropout must be in [0, 1), got {config.att_dropout}")
  if image_size is not None and image_size % 4:
    raise ConfigError(f"tspr needs an image size divisible by 4, got {image_size}")
  if image_size is not None and (image_size // 4) ** 2 < config.knn:
    raise ConfigError(f"tspr image size {image_size} gives fewer latent positions than knn={config.knn}")
  return config

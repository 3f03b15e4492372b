"""StyleBank (Chen et al. 2017): image encoder E, one filter bank K_i per style, image decoder D.

E and D follow the paper's Sec. 3.1 (one stride-1 9x9 conv and two stride-2 3x3 convs, mirrored in
the decoder; instance norm + ReLU after every conv but the last) at 32/64/128 channels as in the
yujiachen-y reimplementation (REFERENCES.md section 3). The decoder upsamples with nearest + conv by
default (checkerboard-free; `upsample='transpose'` gives the paper's fractionally-strided convs).
A bank K_i is a 3x3 conv 128->128 applied to E's features (F~ = K_i (x) F, Eq. 1); `bank_layers > 1`
stacks several with IN + ReLU between them.

Parameters travel as one dict `{'encoder', 'decoder', 'banks': {'bank_000': ..., ...}}` so that
banks can be appended (incremental learning) and frozen part by part.
"""
import dataclasses
from typing import Any, Dict, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxstyle import nn as jsnn


@dataclasses.dataclass(frozen=True)
class StyleBankConfig:
  """Architecture, loss and schedule settings; `--set key=value` overrides any field.

  Loss layers follow the paper (VGG16: content relu4_2; style relu1_2, relu2_2, relu3_2,
  relu4_2) and T = 2 stylization steps per auto-encoder step (paper and both reimplementations).
  The paper's weights (content 1, style 100) were too weak in reimplementations (REFERENCES.md);
  ours use the Johnson/fast-neural-style balance for a Caffe VGG16 on 0-255 features with
  Gram / (C*H*W) (content 1, style 5, TV 1e-6), which visibly stylizes with our default HED
  VGG16. Adam lr 1e-3 decayed x0.8 every 10k steps (jxcodetw/Stylebank).
  """
  width: float = 1.0                      # channel multiplier: 32/64/128 at 1.0
  bank_layers: int = 1
  bank_kernel: int = 3
  upsample: str = "nearest"               # nearest (upsample + conv) | transpose
  content_layers: Tuple[str, ...] = ("relu4_2",)
  style_layers: Tuple[str, ...] = ("relu1_2", "relu2_2", "relu3_2", "relu4_2")
  content_weight: float = 1.0
  style_weight: float = 5.0
  style_layer_weights: Tuple[float, ...] = ()   # one per style layer; () = all 1
  tv_weight: float = 1e-6
  identity_weight: float = 1.0            # auto-encoder branch: MSE(D(E(I)), I) on [0, 1] pixels
  gram_normalize: str = "chw"
  # Each layer's loss / its target's mean square (losses/perceptual.py): the weights then act as
  # relative balances, not the raw-scale balance above; false = raw losses (docs/training.md).
  normalize_layers: bool = True
  stylize_steps: int = 2                  # T: stylization steps before each auto-encoder step
  learning_rate: float = 1e-3
  lr_decay: float = 0.8
  lr_decay_every: int = 10000
  style_size: int = 256                   # long side of each style image when computing its Grams
  pixel_scale: float = 255.0              # the network sees x * pixel_scale and returns that range
  # Added to the decoder's output (in [0, 1] units) so that an untrained network starts at mid-grey:
  # from 0 (black) the perceptual terms pull the output below 0 faster than the identity loss lifts
  # it, and short runs end dark. 0 = the reimplementations' plain linear output.
  output_offset: float = 0.5
  base_checkpoint: str = ""               # incremental learning: the trained model to extend
  new_styles: Tuple[str, ...] = ()        # incremental: style files/folders (default --style_dir)

  def channels(self) -> Tuple[int, int, int]:
    return tuple(max(1, int(round(c * self.width))) for c in (32, 64, 128))


ARCH_FIELDS = ("width", "bank_layers", "bank_kernel", "upsample", "pixel_scale", "output_offset")


def bank_name(i: int) -> str:
  """Parameter name of bank i (zero-padded so that sorted names keep the index order)."""
  return f"bank_{i:03d}"


class Encoder(nn.Module):
  """Image encoder E: [B, H, W, 3] in [0, 1] -> F [B, H/4, W/4, C3] (C3 = 128 at width 1)."""
  config: StyleBankConfig
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x01: jax.Array) -> jax.Array:
    x = (x01 * self.config.pixel_scale).astype(self.dtype or jnp.float32)
    layers = zip(self.config.channels(), (9, 3, 3), (1, 2, 2))
    for i, (features, kernel, stride) in enumerate(layers):
      x = jsnn.ConvLayer(features, kernel, strides=stride, dtype=self.dtype, name=f"conv{i + 1}")(x)
      x = nn.relu(jsnn.InstanceNorm(dtype=self.dtype, name=f"norm{i + 1}")(x))
    return x


class StyleFilterBank(nn.Module):
  """One style's filter bank K_i: F [B, h, w, C3] -> F~ [B, h, w, C3]."""
  config: StyleBankConfig
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, f: jax.Array) -> jax.Array:
    features = f.shape[-1]
    for i in range(self.config.bank_layers):
      if i:
        f = nn.relu(jsnn.InstanceNorm(dtype=self.dtype, name=f"norm{i}")(f))
      f = jsnn.ConvLayer(features, self.config.bank_kernel, dtype=self.dtype,
                         name=f"conv{i + 1}")(f)
    return f


class Decoder(nn.Module):
  """Image decoder D: F~ [B, h, w, C3] -> [B, 4h, 4w, 3], [0, 1] range (not clipped), float32."""
  config: StyleBankConfig
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, f: jax.Array) -> jax.Array:
    c1, c2, _ = self.config.channels()
    x = f.astype(self.dtype or jnp.float32)
    for i, features in enumerate((c2, c1)):
      if self.config.upsample == "transpose":
        x = jsnn.ConvTranspose(features, 3, strides=2, padding=1, output_padding=1,
                               dtype=self.dtype, name=f"up{i + 1}")(x)
      else:
        x = jsnn.UpsampleConv(features, 3, dtype=self.dtype, name=f"up{i + 1}")(x)
      x = nn.relu(jsnn.InstanceNorm(dtype=self.dtype, name=f"norm{i + 1}")(x))
    x = jsnn.ConvLayer(3, 9, dtype=self.dtype, name="out")(x)
    return x.astype(jnp.float32) / self.config.pixel_scale + self.config.output_offset


class StyleBankNet:
  """E, the banks and D as pure functions of one params dict (see the module docstring).

  Attributes:
    config: StyleBankConfig.
    dtype: computation dtype (parameters stay float32).
  """

  def __init__(self, config: StyleBankConfig, dtype=None):
    if config.upsample not in ("nearest", "transpose"):
      raise ValueError(f"upsample must be nearest or transpose, got {config.upsample!r}")
    self.config = config
    self.dtype = dtype
    # The loss network computes in bf16 too under mixed precision (its statistics stay f32).
    self.vgg_dtype = None if dtype in (None, jnp.float32) else dtype
    self.encoder = Encoder(config, dtype)
    self.bank = StyleFilterBank(config, dtype)
    self.decoder = Decoder(config, dtype)

  # ---- parameters

  def init(self, rng: jax.Array, x01: jax.Array, num_styles: int) -> Dict[str, Any]:
    """Fresh parameters with `num_styles` banks for inputs shaped like `x01` [B, H, W, 3]."""
    r_enc, r_dec, r_bank = jax.random.split(rng, 3)
    enc = self.encoder.init(r_enc, x01)["params"]
    f = jax.eval_shape(self.encoder.apply, {"params": enc}, x01)
    dec = self.decoder.init(r_dec, jnp.zeros(f.shape, jnp.float32))["params"]
    return {"encoder": enc, "decoder": dec,
            "banks": self.init_banks(r_bank, f.shape[-1], range(num_styles))}

  def init_banks(self, rng: jax.Array, channels: int, indices: Sequence[int]) -> Dict[str, Any]:
    """Fresh banks named after `indices` (each from its own fold of `rng`)."""
    dummy = jnp.zeros((1, 8, 8, channels), jnp.float32)
    return {bank_name(i): self.bank.init(jax.random.fold_in(rng, i), dummy)["params"]
            for i in indices}

  @staticmethod
  def num_styles(params) -> int:
    return len(params["banks"])

  # ---- the three parts

  def encode(self, params, x01: jax.Array) -> jax.Array:
    """E: [B, H, W, 3] -> F [B, H/4, W/4, C3] (H, W multiples of 4)."""
    return self.encoder.apply({"params": params["encoder"]}, x01)

  def decode(self, params, f: jax.Array) -> jax.Array:
    """D: F [B, h, w, C3] -> image [B, 4h, 4w, 3] (float32, unclipped)."""
    return self.decoder.apply({"params": params["decoder"]}, f)

  def _stacked_banks(self, banks):
    names = [bank_name(i) for i in range(len(banks))]
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *[banks[n] for n in names])

  def apply_bank(self, banks, f: jax.Array, style_id: jax.Array) -> jax.Array:
    """K_{style_id[b]} (x) F_b for each sample: only the chosen bank runs per sample.

    Args:
      banks: {'bank_000': params, ...}.
      f: [B, h, w, C3] encoder features.
      style_id: [B] int bank index per sample.
    Returns:
      [B, h, w, C3].
    """
    p = jax.tree_util.tree_map(lambda a: a[style_id], self._stacked_banks(banks))
    # StyleFilterBank's layers with per-sample parameters; vmapping the module instead would make
    # XLA run one grouped convolution, several times slower (see `per_sample_conv`).
    for i in range(self.config.bank_layers):
      if i:
        norm = p[f"norm{i}"]
        f = jsnn.instance_norm(f, norm["scale"], norm["bias"], dtype=jnp.float32)
        f = nn.relu(f).astype(self.dtype or jnp.float32)
      conv = p[f"conv{i + 1}"]["conv"]
      f = jsnn.per_sample_conv(f, conv["kernel"], conv["bias"], dtype=self.dtype)
    return f

  def fuse_banks(self, banks, f: jax.Array, weights: jax.Array) -> jax.Array:
    """Linear and region fusion (paper Sec. 4): F~ = sum_i w_i (K_i (x) F) + (1 - sum_i w_i) F.

    Args:
      banks: {'bank_000': params, ...}.
      f: [B, h, w, C3] encoder features.
      weights: [B, S] per-image or [B, h, w, S] per-position weights over all S banks; where they
        sum to less than 1 the remainder keeps the auto-encoder's content features F.
    Returns:
      [B, h, w, C3].
    """
    if weights.ndim == 2:
      weights = weights[:, None, None, :]
    weights = weights.astype(f.dtype)
    out = (1.0 - jnp.sum(weights, axis=-1, keepdims=True)) * f
    for i in range(len(banks)):
      out = out + weights[..., i:i + 1] * self.bank.apply({"params": banks[bank_name(i)]}, f)
    return out

  def __call__(self, params, x01: jax.Array, style_id: Optional[jax.Array] = None) -> jax.Array:
    """Stylizing branch E -> K_i -> D, or the auto-encoder branch E -> D when style_id is None."""
    f = self.encode(params, x01)
    if style_id is not None:
      f = self.apply_bank(params["banks"], f, style_id)
    return self.decode(params, f)


def merge_new_banks(params: Dict[str, Any]) -> Dict[str, Any]:
  """Folds an incremental run's `new_banks` into `banks` (inference sees one bank dict)."""
  params = dict(params)
  new = params.pop("new_banks", None) or {}
  params["banks"] = {**params["banks"], **new}
  return params

"""TSPR networks: encoder with content/style latent split, peer regularization, two decoders, noisy
pair discriminator.

Architecture of the official code (nnaisense/conditional-style-transfer, `models/networks.py`,
`ResnetGeneratorResidual` + `NLayerMultiDiscriminatorNoisy`), images in `[-1, 1]`, NHWC:

  encoder  [B,H,W,3] -> reflect-pad 3, 7x7 conv ngf -> 3x3/2 conv 2ngf ("middle", [B,H/2,W/2,2ngf])
           -> 3x3/2 conv 4ngf -> n_blocks residual blocks -> 1x1 conv 12ngf, split into
           content [B,H/4,W/4,4ngf] and style [B,H/4,W/4,8ngf]; the style's first half goes through
           three 3x3/2 convs, a spatial mean and a broadcast back ("global"), the second half stays
           ("local").
  decoder  [B,H/4,W/4,12ngf] -> 1x1 merge conv 4ngf -> n_blocks residual blocks -> two 4x4/2
           transposed convs (2ngf, ngf) -> reflect-pad 3, 7x7 conv 3 -> tanh -> [B,H,W,3].
  disc     [B,H,W,6] (image || paired image) + N(0, 0.1^2) noise -> 4x4 convs ndf/2, 2ndf/2, 4ndf/1,
           8ndf/1 (LeakyReLU 0.2, instance norm after all but the first) -> 4x4 conv 1 -> patch scores.

Every conv is followed by non-affine instance norm and ReLU unless said otherwise; weights are
N(0, 0.02), biases 0 (CycleGAN's `init_weights`).
"""
from typing import Any, Dict, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxstyle.nn.conv import ConvLayer, ConvTranspose
from jaxstyle.nn.norms import InstanceNorm
from jaxstyle.nn.recombination import PeerRegularization

Array = jax.Array
_INIT = nn.initializers.normal(stddev=0.02)


def _norm(name: str, dtype) -> nn.Module:
  return InstanceNorm(use_scale=False, use_bias=False, dtype=dtype, name=name)


class ConvNormReLU(nn.Module):
  """Conv (reflect or zero padded) -> instance norm (no affine) -> ReLU. `[B,H,W,C] -> [B,H/s,W/s,F]`."""
  features: int
  kernel_size: int
  strides: int = 1
  padding: str = "zero"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = ConvLayer(self.features, self.kernel_size, self.strides, self.padding, dtype=self.dtype,
                  kernel_init=_INIT, name="conv")(x)
    return nn.relu(_norm("norm", self.dtype)(x))


class ResnetBlock(nn.Module):
  """Reflect-pad 3x3 conv -> IN -> PReLU -> reflect-pad 3x3 conv -> IN, plus identity. Keeps shape."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = x.shape[-1]
    y = ConvLayer(c, 3, padding="reflect", dtype=self.dtype, kernel_init=_INIT, name="conv1")(x)
    y = nn.PReLU(negative_slope_init=0.25, param_dtype=jnp.float32, name="prelu")(
        _norm("norm1", self.dtype)(y))
    y = ConvLayer(c, 3, padding="reflect", dtype=self.dtype, kernel_init=_INIT, name="conv2")(y)
    return x + _norm("norm2", self.dtype)(y)


class GlobalStyle(nn.Module):
  """Global style code: three 3x3/2 convs, spatial mean, broadcast. `[B,h,w,C] -> [B,h,w,C]`."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    y = x
    for i in range(3):
      y = ConvNormReLU(x.shape[-1], 3, 2, dtype=self.dtype, name=f"down_{i}")(y)
    y = jnp.mean(y, axis=(1, 2), keepdims=True)
    return jnp.broadcast_to(y, x.shape).astype(x.dtype)


class Encoder(nn.Module):
  """Image `[B,H,W,3]` in [-1,1] -> {'content': [B,H/4,W/4,4ngf], 'style': [..,8ngf], 'middle': [B,H/2,W/2,2ngf]}."""
  ngf: int = 64
  n_blocks: int = 6
  global_style: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Dict[str, Array]:
    g = self.ngf
    x = ConvNormReLU(g, 7, padding="reflect", dtype=self.dtype, name="stem")(x)
    middle = ConvNormReLU(2 * g, 3, 2, dtype=self.dtype, name="down_0")(x)
    x = ConvNormReLU(4 * g, 3, 2, dtype=self.dtype, name="down_1")(middle)
    for i in range(self.n_blocks):
      x = ResnetBlock(dtype=self.dtype, name=f"block_{i}")(x)
    z = ConvNormReLU(12 * g, 1, dtype=self.dtype, name="latent")(x)
    content, style = z[..., :4 * g], z[..., 4 * g:]
    if self.global_style:
      style = jnp.concatenate(
          [GlobalStyle(dtype=self.dtype, name="global_style")(style[..., :4 * g]), style[..., 4 * g:]],
          axis=-1)
    return {"content": content, "style": style, "middle": middle}


class Decoder(nn.Module):
  """Latent `[B,h,w,12ngf]` (content || style) -> image `[B,4h,4w,3]` in [-1,1]."""
  ngf: int = 64
  n_blocks: int = 6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z: Array) -> Array:
    g = self.ngf
    x = ConvNormReLU(4 * g, 1, dtype=self.dtype, name="merge")(z)
    for i in range(self.n_blocks):
      x = ResnetBlock(dtype=self.dtype, name=f"block_{i}")(x)
    for i, width in enumerate((2 * g, g)):
      x = ConvTranspose(width, 4, strides=2, padding=1, dtype=self.dtype, kernel_init=_INIT,
                        name=f"up_{i}")(x)
      x = nn.relu(_norm(f"up_norm_{i}", self.dtype)(x))
    x = ConvLayer(3, 7, padding="reflect", dtype=self.dtype, kernel_init=_INIT, name="out")(x)
    return jnp.tanh(x.astype(jnp.float32))


class Generator(nn.Module):
  """Encoder, peer regularization and the main + auxiliary decoders (parameter groups by name).

  Methods (call with `generator.apply(variables, ..., method=...)`):
    encode(x) -> latent dict; decode(z) / decode_aux(z) -> image; recombine(z, z_peer, ...) -> z.
  """
  ngf: int = 64
  n_blocks: int = 6
  global_style: bool = True
  knn: int = 5
  bidirectional: bool = True
  att_dropout: float = 0.2
  knn_chunk: int = 4096
  axis_name: Optional[str] = None
  dtype: Any = jnp.float32

  def setup(self):
    self.encoder = Encoder(self.ngf, self.n_blocks, self.global_style, self.dtype)
    self.peer_reg = PeerRegularization(k=self.knn, dropout_rate=self.att_dropout,
                                       bidirectional=self.bidirectional, axis_name=self.axis_name,
                                       chunk=self.knn_chunk, dtype=self.dtype)
    self.decoder = Decoder(self.ngf, self.n_blocks, self.dtype)
    self.decoder_aux = Decoder(self.ngf, self.n_blocks, self.dtype)

  def encode(self, x: Array) -> Dict[str, Array]:
    return self.encoder(x)

  def decode(self, z: Array) -> Array:
    return self.decoder(z)

  def decode_aux(self, z: Array) -> Array:
    return self.decoder_aux(z)

  def recombine(self, z: Dict[str, Array], z_peer: Dict[str, Array], *, train: bool = False,
                recombine_content: bool = True, recombine_style: bool = True,
                dropout_keys: Optional[Array] = None) -> Array:
    """Peer-regularized latent `[B,h,w,12ngf]` (content || style) of `z` with peers `z_peer`."""
    content, style = self.peer_reg(
        z["content"], z["style"], z_peer["content"], z_peer["style"], train=train,
        recombine_content=recombine_content, recombine_style=recombine_style,
        dropout_keys=dropout_keys)
    return jnp.concatenate([content, style], axis=-1)

  def __call__(self, x: Array, peer: Array) -> Array:
    """Stylizes `x` with `peer` (both in [-1,1]); also touches the auxiliary decoder (for init)."""
    z, zp = self.encode(x), self.encode(peer)
    self.decode_aux(latent(z))
    return self.decode(self.recombine(z, zp))


def latent(z: Dict[str, Array]) -> Array:
  """Concatenated latent `content || style` of an encoder output."""
  return jnp.concatenate([z["content"], z["style"]], axis=-1)


class Discriminator(nn.Module):
  """`disc_noisy`: patch discriminator on an image pair. `[B,H,W,3] x2 -> [B,H/4+4,W/4+4,1]`."""
  ndf: int = 64
  noise: float = 0.1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, image: Array, paired: Array, noise_key: Optional[Array] = None) -> Array:
    """Scores `image` as a sample of `paired`'s style class; `noise_key` `[B]` per-sample keys."""
    x = jnp.concatenate([image, paired], axis=-1).astype(jnp.float32)
    if noise_key is not None and self.noise > 0:
      x = x + self.noise * jax.vmap(lambda k: jax.random.normal(k, x.shape[1:]))(noise_key)
    x = x.astype(self.dtype)
    d = self.ndf
    conv = lambda f, s, name: ConvLayer(f, 4, s, padding="zero", dtype=self.dtype,
                                        kernel_init=_INIT, name=name)
    x = nn.leaky_relu(conv(d, 2, "conv_0")(x), 0.2)
    for i, (f, s) in enumerate(((2 * d, 2), (4 * d, 1), (8 * d, 1)), start=1):
      x = nn.leaky_relu(_norm(f"norm_{i}", self.dtype)(conv(f, s, f"conv_{i}")(x)), 0.2)
    return conv(1, 1, "score")(x).astype(jnp.float32)

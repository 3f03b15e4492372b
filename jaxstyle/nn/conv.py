"""Padded convolutions shared by the feed-forward stylisation networks.

Johnson et al. (pytorch/examples `fast_neural_style`), MSG-Net and AdaIN's decoder pad with *reflection*
and then run an unpadded convolution: zero padding darkens the borders of stylised images. Upsampling is
nearest-neighbour followed by a convolution, which avoids the checkerboard artifacts of transposed
convolutions (Odena et al. 2016, "Deconvolution and Checkerboard Artifacts"; MSG-Net's
`UpsampleConvLayer`).

All layers keep float32 parameters and compute in `dtype` (None = Flax's default promotion).
"""
import functools
from typing import Any, Callable, Optional

import flax.linen as nn
from flax.linen.dtypes import promote_dtype
import jax
import jax.numpy as jnp

from jaxstyle.nn import kernel_grad, reflect_conv, subpixel, winograd

Array = jax.Array

_PADDINGS = ("reflect", "zero", "none")


def reflect_pad(x: Array, pad: int) -> Array:
  """Reflection-pads the two spatial axes of `x` `[B, H, W, C]` by `pad` pixels on every side.

  Same as `torch.nn.ReflectionPad2d(pad)` (the edge pixel is not repeated), so `pad` must be smaller than
  H and W.
  """
  if pad == 0:
    return x
  reflect_conv.check_pad(x, pad)
  if jax.default_backend() == "cpu":
    return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
  return _reflect_pad_one_pass(x, pad)


def _reflect_pad_one_pass(x: Array, p: int) -> Array:
  """`reflect_pad` as a sum of zero-padded pieces (the map, its 4 mirrored edges and 4 corners).

  `jnp.pad(mode='reflect')` builds the result by concatenation, which XLA:GPU runs as two passes
  (rows, then columns) at a fraction of the memory bandwidth: on an H200 they took 5.6 of the 13.7
  ms of an AdaIN bf16 train step. Zero pads, slices and adds fuse into one loop over the output.
  """
  _, h, w, _ = x.shape
  top, bottom = jnp.flip(x[:, 1:p + 1], 1), jnp.flip(x[:, h - 1 - p:h - 1], 1)
  pieces = []
  for rows, (r0, r1) in ((top, (0, h + p)), (x, (p, p)), (bottom, (h + p, 0))):
    left, right = jnp.flip(rows[:, :, 1:p + 1], 2), jnp.flip(rows[:, :, w - 1 - p:w - 1], 2)
    for cols, (c0, c1) in ((left, (0, w + p)), (rows, (p, p)), (right, (w + p, 0))):
      pieces.append(jax.lax.pad(cols, jnp.zeros((), x.dtype),
                                ((0, 0, 0), (r0, r1, 0), (c0, c1, 0), (0, 0, 0))))
  return sum(pieces[1:], pieces[0])


def pad_spatial(x: Array, pad: int, padding: str) -> Array:
  """Pads H and W by `pad` with `padding` in {'reflect', 'zero', 'none'} ('none' returns `x`)."""
  if padding == "reflect":
    return reflect_pad(x, pad)
  if padding == "zero":
    return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0))) if pad else x
  if padding == "none":
    return x
  raise ValueError(f"padding must be one of {_PADDINGS}, got {padding!r}")


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_valid_cpu(x: Array, kernel: Array, strides: int) -> Array:
  ho = (x.shape[1] - kernel.shape[0]) // strides + 1
  wo = (x.shape[2] - kernel.shape[1]) // strides + 1
  return kernel_grad.lax_conv(x, kernel, strides, ((0, 1), (0, 1)))[:, :ho, :wo]


def _conv_valid_cpu_fwd(x, kernel, strides):
  return _conv_valid_cpu(x, kernel, strides), (x, kernel)


def _conv_valid_cpu_bwd(strides, residuals, g):
  # The VALID convolution's own rule (image by image for the kernel, see `kernel_grad`):
  # differentiating the padded one instead makes XLA:CPU compute the kernel gradient as a
  # convolution with an (H + 1) x (W + 1) window, 2.5-5x slower (9x9 32->3 at 128 px: 37 vs 13
  # ms; 7x7 64->3: 54 vs 16 ms).
  x, kernel = residuals
  return kernel_grad.valid_conv_vjp(x, kernel, g, strides)


_conv_valid_cpu.defvjp(_conv_valid_cpu_fwd, _conv_valid_cpu_bwd)


def conv_valid(x: Array, kernel: Array, strides: int = 1) -> Array:
  """Unpadded ('VALID') convolution: `[B, H, W, Cin]` * `[kh, kw, Cin, F]` ->
  `[B, (H - kh) // s + 1, (W - kw) // s + 1, F]`.

  XLA:CPU (jax 0.10) runs unpadded convolutions on a much slower path than padded ones: a 9x9
  32->3 convolution at 128 px takes 64 ms VALID and 2.5 ms with one extra zero row and column
  (a 3x3 64->32 one 33 vs 7 ms). On CPU the forward pass therefore pads one zero row and column
  at the bottom and right, which only adds outputs past the VALID ones, and crops them; the
  gradients are those of the VALID convolution (see `_conv_valid_cpu_bwd`). Other backends run
  the plain VALID convolution.
  """
  if jax.default_backend() == "cpu":
    return _conv_valid_cpu(x, kernel, strides)
  return kernel_grad.lax_conv(x, kernel, strides, "VALID")


def upsample_nearest(x: Array, factor: int) -> Array:
  """Nearest-neighbour upsampling of `[B, H, W, C]` by an integer `factor` -> `[B, fH, fW, C]`."""
  if factor == 1:
    return x
  return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


def _stack_shifts(in_channels: int, kernel_size: int, strides: int) -> bool:
  """Whether to run a VALID conv as a (k, 1) conv over k horizontally shifted copies of the input.

  A wide kernel over very few channels (the 9x9 RGB input layers) is slow on XLA:CPU (11 ms for
  9x9 3->32 at 128 px); with the 9 shifts stacked into 27 channels it takes 2.7 ms.
  """
  return (strides == 1 and kernel_size >= 5 and in_channels * kernel_size <= 32
          and jax.default_backend() == "cpu")


class _ConvParams(nn.Module):
  """The parameters of an `nn.Conv` (same names, shapes and initialisers) without applying it;
  with `transpose_kernel`, those of an `nn.ConvTranspose(transpose_kernel=True)` (`[k, k, F, Cin]`)."""
  features: int
  kernel_size: int
  use_bias: bool
  kernel_init: Callable
  transpose_kernel: bool = False

  @nn.compact
  def __call__(self, in_channels: int):
    k = self.kernel_size
    io = (self.features, in_channels) if self.transpose_kernel else (in_channels, self.features)
    kernel = self.param("kernel", self.kernel_init, (k, k, *io), jnp.float32)
    bias = (self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
            if self.use_bias else None)
    return kernel, bias


def _shifted_conv(x: Array, kernel: Array, bias: Optional[Array], dtype) -> Array:
  """VALID stride-1 conv of `x` `[B, H, W, C]` with `kernel` `[k, k, C, F]` via stacked shifts."""
  k, _, c, f = kernel.shape
  x, kernel, bias = promote_dtype(x, kernel, bias, dtype=dtype)
  wo = x.shape[2] - k + 1
  stacked = jnp.concatenate([x[:, :, j:j + wo] for j in range(k)], axis=-1)  # channels (kw, C)
  y = conv_valid(stacked, kernel.reshape(k, 1, k * c, f))
  return y if bias is None else y + bias


def _pointwise_conv(x: Array, kernel: Array, bias: Optional[Array], strides: int, dtype) -> Array:
  """1x1 conv of `x` `[B, H, W, C]` with `kernel` `[1, 1, C, F]` as a matmul.

  XLA:CPU computes a 1x1 convolution's kernel gradient as a convolution with an H x W window on its
  slow generic path (90 ms for 128->512 at 32x32, a 2 ms matmul).
  """
  x, kernel, bias = promote_dtype(x[:, ::strides, ::strides], kernel, bias, dtype=dtype)
  y = jnp.einsum("bhwc,co->bhwo", x, kernel[0, 0])
  return y if bias is None else y + bias


def winograd_conv(x: Array, features: int, *, name: str, use_bias: bool = True,
                  kernel_init: Callable = nn.linear.default_kernel_init, dtype=None,
                  transformed: Optional[dict] = None, zero_pad: bool = False) -> Array:
  """An unpadded 3x3 `nn.Conv` named `name` (same parameters), run by Winograd.

  Call it inside a compact `__call__` where `winograd.applies(...)`; the parameters are created in
  the calling module. `transformed` (`winograd.transform_frozen` of the kernel) marks the layer
  frozen: its precomputed transforms are used and no gradient reaches the weights. `zero_pad`
  pads one zero pixel per side first ('SAME'; the frozen path then skips the padded border's
  input gradient).
  """
  kernel, bias = _ConvParams(features, 3, use_bias, kernel_init, name=name)(x.shape[-1])
  x, kernel, bias = promote_dtype(x, kernel, bias, dtype=dtype)
  if transformed is not None:
    return winograd.conv3x3_frozen(x, transformed, bias, zero_pad=zero_pad)
  return winograd.conv3x3_valid(pad_spatial(x, 1, "zero") if zero_pad else x, kernel, bias)


def valid_conv(x: Array, features: int, kernel_size: int, *, name: str, strides: int = 1,
               use_bias: bool = True,
               kernel_init: Callable = nn.linear.default_kernel_init, dtype=None) -> Array:
  """An unpadded `nn.Conv` named `name` (same parameters and dtypes), run by `conv_valid`.

  Call it inside a compact `__call__`; the parameters are created in the calling module.
  """
  kernel, bias = _ConvParams(features, kernel_size, use_bias, kernel_init, name=name)(x.shape[-1])
  x, kernel, bias = promote_dtype(x, kernel, bias, dtype=dtype)
  y = conv_valid(x, kernel, strides)
  return y if bias is None else y + bias


def reflect_same_conv(x: Array, features: int, kernel_size: int, *, name: str,
                      use_bias: bool = True,
                      kernel_init: Callable = nn.linear.default_kernel_init, dtype=None) -> Array:
  """A stride-1 `nn.Conv` named `name` (same parameters) over `x` reflection-padded by
  `kernel_size // 2`, without the padding pass (`reflect_conv`; for `reflect_conv.applies`).

  Call it inside a compact `__call__`; the parameters are created in the calling module.
  """
  kernel, bias = _ConvParams(features, kernel_size, use_bias, kernel_init, name=name)(x.shape[-1])
  x, kernel, bias = promote_dtype(x, kernel, bias, dtype=dtype)
  return reflect_conv.conv_reflect_same(x, kernel, bias)


class ConvLayer(nn.Module):
  """Explicit padding followed by a VALID convolution.

  On CPU, 1x1 layers run as matmuls, wide 3x3 stride-1 layers by Winograd (`winograd.applies`),
  wide-kernel RGB layers as stacked shifts (`_stack_shifts`) and the rest by `conv_valid`;
  elsewhere, in `reflect_conv`'s 'border' mode, stride-1 reflection-padded layers skip the
  padding pass. The parameters are always those of an `nn.Conv` named 'conv'.

  `[B, H, W, Cin] -> [B, (uH + 2p - k) // s + 1, ..., features]` with `u = upsample` and
  `p = pad` (default `kernel_size // 2`, which keeps `ceil(uH / s)` for odd kernels) for
  'reflect'/'zero' padding; 'none' means p = 0.

  Attributes:
    features: output channels.
    kernel_size: square kernel side.
    strides: square stride.
    padding: 'reflect' (default), 'zero' or 'none'.
    use_bias: add a learned bias.
    dtype: compute dtype (parameters stay float32).
    kernel_init: kernel initialiser (TSPR uses N(0, 0.02), the others Flax's default).
    pad: pixels per side for 'reflect'/'zero' (None = `kernel_size // 2`); e.g. 1 for the 4x4
      PatchGAN discriminator convolutions (`Conv2d(k=4, padding=1)`).
    upsample: integer nearest-neighbour upsampling of the input before padding (1 = none). 3x3
      layers after 2x upsampling run at the input resolution (`subpixel`), 1x1 layers convolve
      before upsampling; both give the same result as upsampling first.
  """
  features: int
  kernel_size: int
  strides: int = 1
  padding: str = "reflect"
  use_bias: bool = True
  dtype: Optional[Any] = None
  kernel_init: Callable = nn.linear.default_kernel_init
  pad: Optional[int] = None
  upsample: int = 1

  @nn.compact
  def __call__(self, x: Array) -> Array:
    pad = self.kernel_size // 2 if self.pad is None else self.pad
    if self.upsample > 1 and subpixel.applies(self.kernel_size, self.upsample, self.strides,
                                              self.padding, pad):
      kernel, bias = _ConvParams(self.features, 3, self.use_bias, self.kernel_init,
                                 name="conv")(x.shape[-1])
      # The kernel stays in its parameter dtype: its taps are summed before the cast.
      x, _, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
      return subpixel.upsample_conv3x3(x, kernel, bias, self.padding)
    pointwise_first = self.upsample > 1 and subpixel.commutes(self.kernel_size, self.strides,
                                                              self.padding, pad)
    if self.upsample > 1 and not pointwise_first:
      x = upsample_nearest(x, self.upsample)
    if self.padding == "reflect" and reflect_conv.applies(self.kernel_size, self.strides, pad):
      return reflect_same_conv(x, self.features, self.kernel_size, name="conv",
                               use_bias=self.use_bias, kernel_init=self.kernel_init,
                               dtype=self.dtype)
    x = pad_spatial(x, pad, self.padding)
    if self.kernel_size == 1 and jax.default_backend() == "cpu":
      kernel, bias = _ConvParams(self.features, 1, self.use_bias, self.kernel_init,
                                 name="conv")(x.shape[-1])
      y = _pointwise_conv(x, kernel, bias, self.strides, self.dtype)
    elif winograd.applies(x.shape[-1], self.features, self.kernel_size, self.strides, self.dtype):
      y = winograd_conv(x, self.features, name="conv", use_bias=self.use_bias,
                        kernel_init=self.kernel_init, dtype=self.dtype)
    elif _stack_shifts(x.shape[-1], self.kernel_size, self.strides):
      kernel, bias = _ConvParams(self.features, self.kernel_size, self.use_bias, self.kernel_init,
                                 name="conv")(x.shape[-1])
      y = _shifted_conv(x, kernel, bias, self.dtype)
    else:
      y = valid_conv(x, self.features, self.kernel_size, name="conv", strides=self.strides,
                     use_bias=self.use_bias, kernel_init=self.kernel_init, dtype=self.dtype)
    return upsample_nearest(y, self.upsample) if pointwise_first else y


class UpsampleConv(nn.Module):
  """Nearest-neighbour upsampling then a reflection-padded convolution (MSG-Net `UpsampleConvLayer`).

  `[B, H, W, Cin] -> [B, upsample*H/s, upsample*W/s, features]`.

  Attributes:
    features: output channels.
    kernel_size: square kernel side.
    upsample: integer nearest-neighbour factor (1 = none).
    strides: convolution stride after upsampling.
    padding: 'reflect' (default), 'zero' or 'none'.
    use_bias: add a learned bias.
    dtype: compute dtype (parameters stay float32).
    kernel_init: kernel initialiser.
  """
  features: int
  kernel_size: int
  upsample: int = 2
  strides: int = 1
  padding: str = "reflect"
  use_bias: bool = True
  dtype: Optional[Any] = None
  kernel_init: Callable = nn.linear.default_kernel_init

  @nn.compact
  def __call__(self, x: Array) -> Array:
    return ConvLayer(self.features, self.kernel_size, self.strides, self.padding, self.use_bias,
                     self.dtype, self.kernel_init, upsample=self.upsample, name="conv_layer")(x)


class ConvTranspose(nn.Module):
  """Transposed convolution with PyTorch's `ConvTranspose2d(k, stride, padding, output_padding)` geometry.

  `[B, H, W, Cin] -> [B, (H-1)*s - 2p + k + output_padding, ..., features]`. Kept for the methods whose
  reference decoders use it (TSPR's 4x4 stride-2 layers, StyleBank); new code should prefer
  `UpsampleConv`. The kernel is `[k, k, features, Cin]`, i.e. a PyTorch weight `[Cin, Cout, k, k]`
  transposed by `(2, 3, 1, 0)`.

  Attributes:
    features: output channels.
    kernel_size: square kernel side.
    strides: square stride.
    padding: PyTorch's implicit padding `p` (cropped from the full transposed output).
    output_padding: extra rows/columns added on the bottom/right.
    use_bias: add a learned bias.
    dtype: compute dtype (parameters stay float32).
    kernel_init: kernel initialiser.
  """
  features: int
  kernel_size: int
  strides: int = 2
  padding: int = 0
  output_padding: int = 0
  use_bias: bool = True
  dtype: Optional[Any] = None
  kernel_init: Callable = nn.linear.default_kernel_init

  @nn.compact
  def __call__(self, x: Array) -> Array:
    k, p = self.kernel_size, self.padding
    if p > k - 1:
      raise ValueError(f"transposed-conv padding {p} must be < kernel_size {k}")
    if ((k, self.strides, p, self.output_padding) == (4, 2, 1, 0)
        and jax.default_backend() == "cpu"):
      kernel, bias = _ConvParams(self.features, k, self.use_bias, self.kernel_init,
                                 transpose_kernel=True, name="conv_transpose")(x.shape[-1])
      x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
      return subpixel.conv_transpose4x4(x, kernel, bias)
    lo = k - 1 - p
    return nn.ConvTranspose(
        self.features, (k, k), strides=(self.strides, self.strides),
        padding=((lo, lo + self.output_padding),) * 2, use_bias=self.use_bias,
        transpose_kernel=True, dtype=self.dtype, param_dtype=jnp.float32,
        kernel_init=self.kernel_init, name="conv_transpose")(x)


def per_sample_conv(x: Array, kernel: Array, bias: Optional[Array] = None, padding: str = "reflect",
                    dtype: Optional[Any] = None) -> Array:
  """Stride-1 'same' convolution with a different kernel for every sample.

  `jax.vmap` over `lax.conv` lowers to one grouped convolution with B groups, which XLA runs several
  times slower than a plain convolution on CPU; a sum of k*k batched matmuls over shifted views
  costs about the same as one shared-kernel convolution.

  Args:
    x: `[B, H, W, Cin]`.
    kernel: `[B, k, k, Cin, Cout]` (odd k), one HWIO kernel per sample.
    bias: optional `[B, Cout]`.
    padding: 'reflect' or 'zero' (`k // 2` pixels per side).
    dtype: compute dtype (None keeps `x`'s).
  Returns:
    `[B, H, W, Cout]`.
  """
  k = kernel.shape[1]
  if k % 2 == 0 or kernel.shape[2] != k:
    raise ValueError(f"per_sample_conv needs square odd kernels, got {kernel.shape[1:3]}")
  dtype = dtype or x.dtype
  xp = pad_spatial(x.astype(dtype), k // 2, padding)
  kernel = kernel.astype(dtype)
  h, w = x.shape[1:3]
  out = sum(jnp.einsum("bhwc,bco->bhwo", xp[:, i:i + h, j:j + w], kernel[:, i, j])
            for i in range(k) for j in range(k))
  if bias is not None:
    out = out + bias.astype(dtype)[:, None, None, :]
  return out

"""Nearest-neighbour 2x upsampling followed by a 3x3 convolution, computed at the input resolution.

After nearest upsampling every 2x2 output block `(2t + a, 2u + b)` sees only three distinct input
rows and columns, and a padded 3x3 window over the upsampled map reads input row `t - 1` once and
row `t` twice (phase `a = 0`) or row `t` twice and `t + 1` once (`a = 1`); likewise for columns. So
each of the four output phases is a 2x2 convolution of the *input* with the kernel's taps summed
per phase (the "sub-pixel" decomposition of resize-convolutions): 16 instead of 36 multiplies per
2x2 block and channel pair, and the 4x larger upsampled map is never built. One convolution with
the four phase kernels as output channels, `[2, 2, Cin, 4 * Cout]`, gives all phases; they are then
interleaved into the `[2H, 2W]` output.

Padding carries over exactly: reflection-padding the upsampled map by one pixel repeats its border
pixel's *input* pixel, i.e. edge-padding the input; zero padding stays zero padding. The result
equals `conv3x3(pad(upsample(x)))` up to float summation order (tested against PyTorch).

PyTorch's 4x4 stride-2 transposed convolution (padding 1) splits the same way: each output phase
is a 2x2 convolution of the one-pixel zero-padded input with four of the kernel's taps
(`conv_transpose4x4`, the CPU path of `ConvTranspose` in that geometry).
"""
from typing import Optional

import jax
import jax.numpy as jnp

from jaxstyle.nn import kernel_grad

Array = jax.Array

# Kernel rows (or columns) summed into tap i of phase a: phase 0 reads input rows (t-1, t, t) and
# phase 1 reads (t, t, t+1) through kernel rows (0, 1, 2).
_TAPS = {(0, 0): (0,), (0, 1): (1, 2), (1, 0): (0, 1), (1, 1): (2,)}

_INPUT_PAD = {"reflect": "edge", "zero": "constant"}


def applies(kernel_size: int, upsample: int, strides: int, padding: str, pad: int) -> bool:
  """Whether `upsample`, pad, then a `kernel_size` convolution can run as `upsample_conv3x3`."""
  return (kernel_size == 3 and upsample == 2 and strides == 1 and pad == 1
          and padding in _INPUT_PAD)


def commutes(kernel_size: int, strides: int, padding: str, pad: int) -> bool:
  """Whether a convolution commutes with nearest upsampling (1x1, stride 1, unpadded): it can
  then run on the smaller map, upsampled afterwards (MSG-Net's upsampling residual paths)."""
  return kernel_size == 1 and strides == 1 and (pad == 0 or padding == "none")


def phase_kernel(kernel: Array) -> Array:
  """`[3, 3, Cin, Cout]` -> `[2, 2, Cin, 4 * Cout]`, output channels ordered (phase a, b, Cout).

  Written as sums of taps: an einsum contracting the 3-long axes runs as a slow generic dot on CPU.
  """
  def tap(a, b, i, j):
    return sum(kernel[r, s] for r in _TAPS[a, i] for s in _TAPS[b, j])
  rows = [[jnp.concatenate([tap(a, b, i, j) for a in (0, 1) for b in (0, 1)], axis=-1)
           for j in (0, 1)] for i in (0, 1)]
  return jnp.stack([jnp.stack(row) for row in rows])


def _interleave(z: Array, h: int, w: int) -> Array:
  """Phase outputs `z` `[B, H + 1, W + 1, 4 * F]` -> `[B, 2H, 2W, F]`.

  Phase (a, b) at input position (t, u) is the 2x2 window starting at padded row t + a, column
  u + b, hence the shifted slices.
  """
  f = z.shape[-1] // 4
  phases = [[z[:, a:a + h, b:b + w, (2 * a + b) * f:(2 * a + b + 1) * f] for b in (0, 1)]
            for a in (0, 1)]
  y = jnp.stack([jnp.stack(row, axis=3) for row in phases], axis=2)  # [B, H, 2, W, 2, F]
  return y.reshape(z.shape[0], 2 * h, 2 * w, f)


def upsample_conv3x3(x: Array, kernel: Array, bias: Optional[Array] = None,
                     padding: str = "reflect") -> Array:
  """`conv3x3(pad(upsample_nearest(x, 2), 1))` computed at the input resolution.

  Args:
    x: `[B, H, W, Cin]`.
    kernel: `[3, 3, Cin, Cout]` (HWIO, cross-correlation like `lax.conv`); its taps are summed in
      its own dtype (float32 parameters), then cast to `x`'s (the compute dtype).
    bias: optional `[Cout]`, in `x`'s dtype.
    padding: padding of the upsampled map, 'reflect' or 'zero' (one pixel per side).
  Returns:
    `[B, 2H, 2W, Cout]`.
  """
  if padding not in _INPUT_PAD:
    raise ValueError(f"padding must be one of {tuple(_INPUT_PAD)}, got {padding!r}")
  _, h, w, _ = x.shape
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode=_INPUT_PAD[padding])
  y = _interleave(_phase_conv(xp, phase_kernel(kernel).astype(x.dtype)), h, w)
  return y if bias is None else y + bias


def _phase_conv(xp: Array, pk: Array) -> Array:
  """VALID 2x2 convolution of the padded input `[B, H + 2, W + 2, C]` with the phase kernels."""
  if jax.default_backend() == "cpu":
    # One matmul over the 4 stacked shifts: on XLA:CPU 1.1-2x faster than the 2x2 convolution
    # and than Winograd on the upsampled map (see docs/benchmarks.md).
    h, w = xp.shape[1] - 2, xp.shape[2] - 2
    cols = jnp.concatenate([xp[:, i:i + h + 1, j:j + w + 1] for i in (0, 1) for j in (0, 1)],
                           axis=-1)
    return jnp.einsum("bhwc,cf->bhwf", cols, pk.reshape(-1, pk.shape[-1]))
  return kernel_grad.lax_conv(xp, pk, 1)


def transpose_phase_kernel(kernel: Array) -> Array:
  """A `ConvTranspose` kernel `[4, 4, Cout, Cin]` -> phase kernels `[2, 2, Cin, 4 * Cout]`.

  Output row `2m + a` of PyTorch's `ConvTranspose2d(k=4, stride=2, padding=1)` sums input rows
  `m - 1 + a + d` (d = 0, 1) through kernel row `3 - a - 2d`; likewise for columns.
  """
  rows = [[jnp.concatenate([kernel[3 - a - 2 * i, 3 - b - 2 * j].T for a in (0, 1)
                            for b in (0, 1)], axis=-1) for j in (0, 1)] for i in (0, 1)]
  return jnp.stack([jnp.stack(row) for row in rows])


def conv_transpose4x4(x: Array, kernel: Array, bias: Optional[Array] = None) -> Array:
  """PyTorch's `ConvTranspose2d(k=4, stride=2, padding=1)` as four 2x2 phase convolutions.

  XLA:CPU computes the kernel gradient of a transposed (input-dilated) convolution on a slow
  generic path: 2.6 s per step for TSPR's first decoder up-layer at 128 px. Its phases are
  ordinary convolutions of the input (one matmul on CPU), whose gradients are fast.

  Args:
    x: `[B, H, W, Cin]`.
    kernel: `[4, 4, Cout, Cin]` (`ConvTranspose`'s layout), in `x`'s dtype.
    bias: optional `[Cout]`.
  Returns:
    `[B, 2H, 2W, Cout]`.
  """
  _, h, w, _ = x.shape
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  y = _interleave(_phase_conv(xp, transpose_phase_kernel(kernel)), h, w)
  return y if bias is None else y + bias

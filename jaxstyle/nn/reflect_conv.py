"""Stride-1 reflection-padded convolutions without a padding pass (GPU/TPU).

`conv(reflect_pad(x, p), K)` equals the zero-padded ('SAME') convolution of `x` plus the
contribution of the frame `reflect_pad(x) - zero_pad(x)`, which is non-zero only in the p-pixel
border. Split into four strips (the top and bottom p rows over the padded width, the left and right
p columns over the map's height), each strip changes only the p output rows or columns next to it,
so two thin convolutions (top with bottom, left with right, stacked along the batch) give the
correction. The backends that run convolutions as library calls (cuDNN) pad with zeros inside the
call and the correction's adds can fuse into the layer's bias and activation, so the padded map need
never be written. On an H200 the one-pass padding fusions took a quarter of AdaIN's bf16 train step,
at about a third of the memory bandwidth (see docs/benchmarks.md); whether this path is faster there
has not been measured yet, so it is opt-in (`set_mode('border')`, the launchers'
`--gpu_reflect_padding=border`). XLA:CPU always pads explicitly (its convolutions and Winograd need
it).
"""
from typing import Optional

import jax
import jax.numpy as jnp

from jaxstyle.errors import TooSmallError
from jaxstyle.nn import kernel_grad

Array = jax.Array

MODES = ("pass", "border")
_MODE = {"mode": "pass"}


def set_mode(mode: str) -> None:
  """How programs traced from now on pad stride-1 reflection-padded layers off CPU.

  'pass': `reflect_pad` writes the padded map (one fused pass), then a VALID convolution.
  'border': `conv_reflect_same`. Parameters and results are the same either way; functions
  already traced (and jit-cached) keep the mode they were traced with.
  """
  if mode not in MODES:
    raise ValueError(f"reflection padding mode must be one of {MODES}, got {mode!r}")
  _MODE["mode"] = mode


def mode() -> str:
  """The mode `set_mode` chose ('pass' unless changed)."""
  return _MODE["mode"]


def applies(kernel_size: int, strides: int, pad: int) -> bool:
  """Whether a reflection-padded layer runs as `conv_reflect_same` (mode 'border', not on CPU)."""
  return (_MODE["mode"] == "border" and jax.default_backend() != "cpu" and strides == 1
          and kernel_size > 1 and kernel_size % 2 == 1 and pad == kernel_size // 2)


def _pad(x: Array, rows=(0, 0), cols=(0, 0)) -> Array:
  return jax.lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (*rows, 0), (*cols, 0), (0, 0, 0)))


def check_pad(x: Array, pad: int) -> None:
  """Raises TooSmallError unless `x` `[B, H, W, C]` can be reflection-padded by `pad` (< H, W)."""
  if pad >= x.shape[1] or pad >= x.shape[2]:
    raise TooSmallError(f"the image is too small for this network: a {x.shape[1]}x{x.shape[2]} "
                        f"feature map cannot take {pad} px of reflection padding; use a larger "
                        "--size (or --image_size)")


def frame_correction(x: Array, kernel: Array) -> Array:
  """`conv(reflect_pad(x, p), kernel) - conv(zero_pad(x, p), kernel)`, `[B, H, W, F]`.

  Non-zero only in the p output rows and columns at each border; computed from thin bands, so
  its cost does not grow with H * W.
  """
  b, h, w, _ = x.shape
  p = kernel.shape[0] // 2
  # The mirrored rows, reflected across the columns too: the padded map's corners belong to them.
  top = jnp.pad(jnp.flip(x[:, 1:p + 1], 1), ((0, 0), (0, 0), (p, p), (0, 0)), mode="reflect")
  bottom = jnp.pad(jnp.flip(x[:, h - 1 - p:h - 1], 1), ((0, 0), (0, 0), (p, p), (0, 0)),
                   mode="reflect")
  # Zero rows beyond each strip stand for the interior, which the zero-padded conv already has.
  strips = jnp.concatenate([_pad(top, rows=(0, 2 * p)), _pad(bottom, rows=(2 * p, 0))])
  rows = kernel_grad.lax_conv(strips, kernel, 1)  # [2B, p, W, F]
  left, right = jnp.flip(x[:, :, 1:p + 1], 2), jnp.flip(x[:, :, w - 1 - p:w - 1], 2)
  strips = jnp.concatenate([_pad(left, rows=(p, p), cols=(0, 2 * p)),
                            _pad(right, rows=(p, p), cols=(2 * p, 0))])
  cols = kernel_grad.lax_conv(strips, kernel, 1)  # [2B, H, p, F]
  return (_pad(rows[:b], rows=(0, h - p)) + _pad(rows[b:], rows=(h - p, 0))
          + _pad(cols[:b], cols=(0, w - p)) + _pad(cols[b:], cols=(w - p, 0)))


def conv_reflect_same(x: Array, kernel: Array, bias: Optional[Array] = None) -> Array:
  """Stride-1 convolution of `x` reflection-padded by `k // 2` (`torch.nn.ReflectionPad2d`).

  Args:
    x: `[B, H, W, Cin]` with H, W > k // 2.
    kernel: `[k, k, Cin, Cout]` (odd k, HWIO), in `x`'s dtype.
    bias: optional `[Cout]`.
  Returns:
    `[B, H, W, Cout]`, equal to `conv(reflect_pad(x, k // 2), kernel, 'VALID')` up to float
    summation order (the border pixels are one conv plus a correction).
  """
  k = kernel.shape[0]
  p = k // 2
  if k % 2 == 0 or kernel.shape[1] != k:
    raise ValueError(f"conv_reflect_same needs a square odd kernel, got {kernel.shape[:2]}")
  check_pad(x, p)
  y = kernel_grad.lax_conv(x, kernel, 1, ((p, p), (p, p))) + frame_correction(x, kernel)
  return y if bias is None else y + bias

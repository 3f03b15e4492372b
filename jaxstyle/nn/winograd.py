"""Winograd F(2x2, 3x3) convolution: the CPU path of wide 3x3 stride-1 convolutions.

XLA:CPU runs a 3x3 convolution directly, about as fast as PyTorch's oneDNN kernels. Winograd's
minimal filtering (Lavin & Gray 2016, "Fast Algorithms for Convolutional Neural Networks") computes
each 2x2 output tile from a 4x4 input tile with 16 instead of 36 multiplications per channel pair:
the input and kernel tiles are transformed (`B^T d B`, `G g G^T`), multiplied as 16 matmuls over
channels, and transformed back (`A^T m A`). With 32+ channels on both sides a layer runs 1.2-2x
faster on CPU, forward and input gradient (VGG's 256->256 at 32x32: 12.7 -> 7.7 ms forward; 64->32
at 128x128: 5.6 -> 2.8 ms); with fewer channels the memory-bound transforms lose to the direct
convolution. F(2x2, 3x3) keeps float32 rounding at the direct convolution's level (~1e-6
relative); F(4x4, 3x3) loses an order of magnitude and was no faster here (its transforms are not
0/+-1 sums), so it is not used. The kernel gradient keeps the direct rule, image by image
(`kernel_grad`): Winograd's was faster for small maps but up to 2x slower once the 16 transformed
tiles outgrow the cache.
"""
from typing import Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxstyle.nn import kernel_grad

Array = jax.Array

# Lavin & Gray's F(2x2, 3x3) matrices.
_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float32)
_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float32)
_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float32)

MIN_CHANNELS = 32   # on both sides.
SEPARATE_TILES = 256  # output tiles (B * H/2 * W/2) from which the 16 matmuls run separately.


def applies(in_channels: int, out_channels: int, kernel_size: int, strides: int,
            dtype=None) -> bool:
  """Whether a convolution takes the Winograd path: CPU, float32, 3x3, stride 1, wide enough."""
  return (kernel_size == 3 and strides == 1 and min(in_channels, out_channels) >= MIN_CHANNELS
          and (dtype is None or jnp.dtype(dtype) == jnp.float32)
          and jax.default_backend() == "cpu")


def _combine(matrix: np.ndarray, parts):
  """Rows of `matrix @ parts` as sums of the parts (the coefficients are 0, +-1 and 0.5)."""
  rows = []
  for coefficients in matrix:
    acc = None
    for c, part in zip(coefficients, parts):
      if c == 0:
        continue
      term = part if c == 1 else -part if c == -1 else part * c
      acc = term if acc is None else acc + term
    rows.append(acc)
  return rows


def transform_kernel(kernel: Array, *, rotate: bool = False) -> Array:
  """`G g G^T` for every channel pair: `[3, 3, Cin, Cout] -> [16, Cin, Cout]`.

  `rotate` transforms the kernel turned by 180 degrees (the input gradient's kernel) instead.
  """
  # One [16, 9] x [9, Cin * Cout] matmul with kron(G, G): the kernel stays contiguous (5x faster
  # on CPU than per-tap sums or an einsum contracting 3-long axes). Reversing the 9 taps turns it.
  c, o = kernel.shape[2:]
  t = np.kron(_G, _G)
  t = jnp.asarray(t[:, ::-1] if rotate else t, kernel.dtype)
  return (t @ kernel.reshape(9, c * o)).reshape(16, c, o)


def _winograd(x: Array, u: Array, contract: int) -> Array:
  """VALID 3x3 convolution of `x` `[B, H, W, C]` with transformed kernels `u` `[16, ., .]`.

  `contract` is the axis of `u` summed against the channels of `x` (1 for a kernel as transformed,
  2 for its in/out transpose, which saves copying the kernel for the input gradient).
  """
  b, h, w, c = x.shape
  ho, wo = h - 2, w - 2
  th, tw = -(-ho // 2), -(-wo // 2)
  # Zero rows/columns past the image only feed outputs past (ho, wo), cropped at the end.
  x = jnp.pad(x, ((0, 0), (0, 2 * th + 2 - h), (0, 2 * tw + 2 - w), (0, 0)))
  d = [[x[:, i:i + 2 * th:2, j:j + 2 * tw:2] for j in range(4)] for i in range(4)]
  cols = [_combine(_BT, [d[i][j] for i in range(4)]) for j in range(4)]  # cols[j][p]
  v = [_combine(_BT, [cols[j][p] for j in range(4)]) for p in range(4)]  # v[p][q]
  n = b * th * tw
  if n >= SEPARATE_TILES:
    # 16 matmuls on separate operands: XLA:CPU fuses each transform into its matmul's input,
    # where stacking them first costs a copy as slow as the matmuls (128 px, 64->64: 20 -> 4.8 ms).
    m = [[jax.lax.dot_general(v[p][q].reshape(n, c), u[4 * p + q],
                              (((1,), (contract - 1,)), ((), ()))).reshape(b, th, tw, -1)
          for q in range(4)] for p in range(4)]
  else:
    # Few tiles (deep, small maps): one batched matmul keeps the cores busy.
    m = jnp.stack([v[p][q] for p in range(4) for q in range(4)]).reshape(16, n, c)
    m = jax.lax.dot_general(m, u, (((2,), (contract,)), ((0,), (0,))))
    m = m.reshape(4, 4, b, th, tw, -1)
  rows = [_combine(_AT, [m[p][q] for p in range(4)]) for q in range(4)]  # rows[q][i]
  y = [_combine(_AT, [rows[q][i] for q in range(4)]) for i in range(2)]  # y[i][j]
  y = jnp.stack([jnp.stack(y_i, axis=3) for y_i in y], axis=2)  # [B, th, 2, tw, 2, Cout]
  return y.reshape(b, 2 * th, 2 * tw, -1)[:, :ho, :wo]


@jax.custom_vjp
def _conv(x: Array, kernel: Array) -> Array:
  return _winograd(x, transform_kernel(kernel), 1)


def _conv_fwd(x, kernel):
  return _conv(x, kernel), (x, kernel)


def _conv_bwd(residuals, g):
  # Autodiff through the transforms is 1.5-2x slower than the direct convolution's backward.
  # The input gradient is itself a 3x3 convolution (of the zero-padded cotangent with the turned,
  # in/out-swapped kernel), so it runs forward Winograd; the kernel gradient uses the direct
  # convolution's rule, image by image (`kernel_grad`; its input-gradient half and, where nothing
  # needs the kernel gradient, e.g. a frozen VGG, all of it are dropped by XLA as unused).
  x, kernel = residuals
  g_pad = jnp.pad(g, ((0, 0), (2, 2), (2, 2), (0, 0)))
  dx = _winograd(g_pad, transform_kernel(kernel, rotate=True), 2)
  dkernel = kernel_grad.valid_conv_vjp(x, kernel, g)[1]
  return dx.astype(x.dtype), dkernel.astype(kernel.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)


def transform_frozen(kernel: Array) -> Dict[str, Array]:
  """The kernel transforms `conv3x3_frozen` takes: {'u': forward, 'u_rot': input gradient}."""
  return {"u": transform_kernel(kernel), "u_rot": transform_kernel(kernel, rotate=True)}


@jax.custom_vjp
def _frozen(x: Array, u: Array, u_rot: Array) -> Array:
  return _winograd(x, u, 1)


def _frozen_fwd(x, u, u_rot):
  return _frozen(x, u, u_rot), u_rot


def _frozen_bwd(u_rot, g):
  dx = _winograd(jnp.pad(g, ((0, 0), (2, 2), (2, 2), (0, 0))), u_rot, 2)
  return dx, jnp.zeros_like(u_rot), jnp.zeros_like(u_rot)


_frozen.defvjp(_frozen_fwd, _frozen_bwd)


def _pad1(x: Array) -> Array:
  return jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))


@jax.custom_vjp
def _frozen_same(x: Array, u: Array, u_rot: Array) -> Array:
  return _winograd(_pad1(x), u, 1)


def _frozen_same_fwd(x, u, u_rot):
  return _frozen_same(x, u, u_rot), u_rot


def _frozen_same_bwd(u_rot, g):
  # Differentiating pad-then-VALID would compute the gradient of the padded input (H + 2 rows)
  # and crop it: (H/2 + 1)^2 instead of (H/2)^2 tiles, 27% more work at 16x16 and 56% at 8x8.
  dx = _winograd(_pad1(g), u_rot, 2)
  return dx, jnp.zeros_like(u_rot), jnp.zeros_like(u_rot)


_frozen_same.defvjp(_frozen_same_fwd, _frozen_same_bwd)


def conv3x3_frozen(x: Array, transformed: Dict[str, Array], bias: Optional[Array] = None, *,
                   zero_pad: bool = False) -> Array:
  """`conv3x3_valid` with the kernel transformed once beforehand (`transform_frozen`).

  For frozen networks (the VGG loss network), whose weights are the same in every call of an
  optimisation or training loop: the transforms then cost nothing per call. The gradient reaches
  `x` only; the transformed kernels (and so the weights) get zero cotangents. With `zero_pad`, `x`
  is unpadded and the convolution keeps its size ('SAME' zero padding, `[B, H, W, Cout]`).
  """
  y = (_frozen_same if zero_pad else _frozen)(x, transformed["u"], transformed["u_rot"])
  return y if bias is None else y + bias


def conv3x3_valid(x: Array, kernel: Array, bias: Optional[Array] = None) -> Array:
  """Unpadded stride-1 3x3 convolution by Winograd F(2x2, 3x3).

  Args:
    x: `[B, H, W, Cin]`, already padded (H, W >= 3).
    kernel: `[3, 3, Cin, Cout]` (HWIO, cross-correlation like `lax.conv`).
    bias: optional `[Cout]`.
  Returns:
    `[B, H - 2, W - 2, Cout]`, equal to `lax.conv_general_dilated(x, kernel, (1, 1), 'VALID')`
    up to float rounding, and so are its gradients.
  """
  if kernel.shape[:3] != (3, 3, x.shape[-1]) or min(x.shape[1:3]) < 3:
    raise ValueError(f"kernel {kernel.shape} does not fit a 3x3 VALID convolution of {x.shape}")
  y = _conv(x, kernel)
  return y if bias is None else y + bias

"""Kernel gradients of unpadded convolutions, image by image on XLA:CPU.

XLA:CPU computes a convolution's kernel gradient as another convolution in which the batch becomes
the contracted feature dimension. With one image that runs fast; with several it falls onto a much
slower path: a 3x3 64->64 layer at 128 px takes 14 ms for one image and 181 ms for four, and one
kernel-gradient convolution per image, summed, takes 66 ms. Winograd's kernel-gradient transform
(1.5-3.9x faster than the batched rule at 2+ images) beats these sums on small maps (128->128 at
32x32, four images: 5.7 vs 8.8 ms) and loses on large ones (64->64 at 128 px: 85 vs 66 ms); a
`lax.scan` over the images hits a slower path still. See docs/benchmarks.md.
"""
import jax

Array = jax.Array

_DIMS = ("NHWC", "HWIO", "NHWC")
MAX_UNROLLED = 32  # images; larger batches keep XLA's batched rule (program size).


def lax_conv(x: Array, kernel: Array, strides: int, padding="VALID") -> Array:
  """`lax.conv_general_dilated` on NHWC images and HWIO kernels (shared by the conv layers)."""
  return jax.lax.conv_general_dilated(x, kernel, (strides, strides), padding,
                                      dimension_numbers=_DIMS)


def valid_conv_vjp(x: Array, kernel: Array, g: Array, strides: int = 1):
  """`(dx, dkernel)` of `conv(x, kernel, strides, 'VALID')` for the cotangent `g`.

  On CPU, for 2 to `MAX_UNROLLED` images, the kernel gradient is summed from one convolution per
  image; the input gradient is XLA's own (fast at any batch).
  """
  b = x.shape[0]
  if jax.default_backend() != "cpu" or not 1 < b <= MAX_UNROLLED:
    return jax.vjp(lambda x, k: lax_conv(x, k, strides), x, kernel)[1](g)
  dx = jax.vjp(lambda x: lax_conv(x, kernel, strides), x)[1](g)[0]
  per_image = [jax.vjp(lambda k, i=i: lax_conv(x[i:i + 1], k, strides), kernel)[1](g[i:i + 1])[0]
               for i in range(b)]
  return dx, sum(per_image[1:], per_image[0])

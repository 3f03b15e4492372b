"""Kernel gradients image by image (`jaxstyle.nn.kernel_grad`), the backward pass of every CPU
convolution that is not a matmul: values against XLA's batched rule, and the convolutions run."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxstyle.nn import kernel_grad


def _conv(x, k, s):
  return jax.lax.conv_general_dilated(x, k, (s, s), "VALID",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _case(rng, batch, kernel, stride):
  x = jnp.asarray(rng.normal(size=(batch, 11, 12, 5)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(*kernel, 5, 4)), jnp.float32)
  g = jnp.asarray(rng.normal(size=_conv(x, k, stride).shape), jnp.float32)
  return x, k, g


def _kernel_gradient_batches(fn, x, k, g):
  """The images (leading size of the input) of each kernel-gradient convolution in `fn`'s jaxpr:
  those whose output has the kernel's shape."""
  eqns = jax.make_jaxpr(lambda *a: fn(*a))(x, k, g).jaxpr.eqns  # a new function: no trace cache
  return [e.invars[0].aval.shape[0] for e in eqns
          if e.primitive.name == "conv_general_dilated" and e.outvars[0].aval.shape == k.shape]


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("kernel,stride", [((3, 3), 1), ((4, 4), 2), ((9, 1), 1), ((3, 3), 2)])
def test_equals_the_batched_rule(rng, batch, kernel, stride):
  x, k, g = _case(rng, batch, kernel, stride)
  dx, dk = kernel_grad.valid_conv_vjp(x, k, g, stride)
  want_dx, want_dk = jax.vjp(lambda x, k: _conv(x, k, stride), x, k)[1](g)
  np.testing.assert_allclose(dx, want_dx, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dk, want_dk, rtol=1e-4, atol=1e-4)


def test_one_kernel_gradient_convolution_per_image_on_cpu(rng, monkeypatch):
  x, k, g = _case(rng, 3, (3, 3), 1)
  vjp = lambda x, k, g: kernel_grad.valid_conv_vjp(x, k, g)
  assert _kernel_gradient_batches(vjp, x, k, g) == [1, 1, 1]
  monkeypatch.setattr(kernel_grad, "MAX_UNROLLED", 2)  # beyond it: XLA's batched rule
  assert _kernel_gradient_batches(vjp, x, k, g) == [3]
  monkeypatch.undo()
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert _kernel_gradient_batches(vjp, x, k, g) == [3]

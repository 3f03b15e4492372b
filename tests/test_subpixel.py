"""Upsample-then-convolve at the input resolution (`jaxstyle.nn.subpixel`, `ConvLayer(upsample=)`),
against PyTorch's `Upsample -> pad -> Conv2d` in float64, values and gradients, on the CPU path and
on the path other backends take (backend patched)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxstyle import nn as jnn
from jaxstyle.nn import subpixel

torch = pytest.importorskip("torch")
torch.set_num_threads(1)  # the test machine is small and shared

_TORCH_PAD = {"reflect": torch.nn.ReflectionPad2d, "zero": torch.nn.ZeroPad2d}


def _nchw(x):
  x = np.transpose(np.asarray(x, np.float64), (0, 3, 1, 2))
  return torch.from_numpy(np.ascontiguousarray(x))


def _nhwc(t):
  return np.transpose(t.detach().numpy(), (0, 2, 3, 1))


def _torch_upsample_conv(x, kernel, bias, padding, weight):
  """PyTorch float64 output and the gradients of sum(output * weight) for x, kernel and bias."""
  tx = _nchw(x).requires_grad_()
  tk = torch.from_numpy(np.transpose(np.asarray(kernel, np.float64), (3, 2, 0, 1)).copy())
  tk.requires_grad_()
  tb = torch.from_numpy(np.asarray(bias, np.float64)).requires_grad_()
  up = torch.nn.Upsample(scale_factor=2, mode="nearest")(tx)
  y = torch.nn.functional.conv2d(_TORCH_PAD[padding](1)(up), tk, tb)
  (y * _nchw(weight)).sum().backward()
  return (_nhwc(y), _nhwc(tx.grad), np.transpose(tk.grad.numpy(), (2, 3, 1, 0)),
          tb.grad.numpy())


@pytest.fixture(params=["cpu", "gpu"])
def backend(request, monkeypatch):
  if request.param != "cpu":
    monkeypatch.setattr(jax, "default_backend", lambda: request.param)
  return request.param


@pytest.mark.parametrize("shape,channels,padding", [
    ((5, 6), (4, 3), "reflect"), ((1, 3), (2, 5), "reflect"), ((4, 4), (3, 2), "zero"),
    ((3, 2), (6, 4), "zero")])
def test_matches_torch_values_and_gradients(rng, backend, shape, channels, padding):
  cin, cout = channels
  x = rng.normal(size=(2, *shape, cin)).astype(np.float32)
  kernel = rng.normal(size=(3, 3, cin, cout)).astype(np.float32)
  bias = rng.normal(size=(cout,)).astype(np.float32)
  weight = rng.normal(size=(2, 2 * shape[0], 2 * shape[1], cout)).astype(np.float32)
  want, *want_grads = _torch_upsample_conv(x, kernel, bias, padding, weight)

  def loss(x, kernel, bias):
    return jnp.sum(subpixel.upsample_conv3x3(x, kernel, bias, padding) * weight)
  y = subpixel.upsample_conv3x3(jnp.asarray(x), kernel, bias, padding)
  assert y.shape == want.shape
  np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
  grads = jax.grad(loss, argnums=(0, 1, 2))(jnp.asarray(x), jnp.asarray(kernel), jnp.asarray(bias))
  for got, ref in zip(grads, want_grads):
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
  # The 4x larger upsampled map is never built: nothing in the program has 2H x 2W x Cin elements.
  jaxpr = jax.make_jaxpr(lambda x: subpixel.upsample_conv3x3(x, kernel, bias, padding))(x)
  big = 2 * shape[0] * 2 * shape[1] * cin * 2
  assert all(np.prod(v.aval.shape) != big or v.aval.shape[-1] != cin
             for e in jaxpr.eqns for v in e.outvars)


def test_phase_kernel_sums_the_taps_each_phase_reads(rng):
  k = rng.normal(size=(3, 3, 1, 1)).astype(np.float32)
  pk = np.asarray(subpixel.phase_kernel(jnp.asarray(k)))[..., 0, :]  # [2, 2, 4 phases]
  k = k[..., 0, 0]
  # Phase (0, 0): input rows (t-1, t) carry kernel rows (0, 1+2), columns likewise.
  np.testing.assert_allclose(pk[..., 0], [[k[0, 0], k[0, 1] + k[0, 2]],
                                          [k[1, 0] + k[2, 0], k[1:, 1:].sum()]], rtol=1e-6)
  # Phase (1, 1): rows (t, t+1) carry (0+1, 2).
  np.testing.assert_allclose(pk[..., 3], [[k[:2, :2].sum(), k[:2, 2].sum()],
                                          [k[2, :2].sum(), k[2, 2]]], rtol=1e-6)


@pytest.mark.parametrize("kernel_size,strides,padding,pad,expected", [
    (3, 1, "reflect", 1, True), (3, 1, "zero", 1, True), (3, 2, "reflect", 1, False),
    (3, 1, "none", 0, False), (3, 1, "reflect", 2, False), (5, 1, "reflect", 2, False)])
def test_applies(kernel_size, strides, padding, pad, expected):
  assert subpixel.applies(kernel_size, 2, strides, padding, pad) is expected
  assert not subpixel.applies(kernel_size, 4, strides, padding, pad)


def _upsample_first(layer, params, x):
  """The same layer's convolution applied after an explicit upsampling (the reference order)."""
  plain = layer.clone(upsample=1)
  return plain.apply({"params": params}, jnn.upsample_nearest(x, layer.upsample))


@pytest.mark.parametrize("kwargs", [
    dict(features=5, kernel_size=3), dict(features=5, kernel_size=3, padding="zero"),
    dict(features=6, kernel_size=1, padding="none"), dict(features=6, kernel_size=1),
    dict(features=6, kernel_size=1, upsample=3), dict(features=4, kernel_size=3, strides=2),
    dict(features=4, kernel_size=5)])
def test_conv_layer_upsample_equals_upsampling_first(rng, backend, kwargs):
  kwargs = {"upsample": 2, **kwargs}
  layer = jnn.ConvLayer(**kwargs)
  x = jnp.asarray(rng.normal(size=(2, 5, 7, 4)), jnp.float32)
  params = layer.init(jax.random.key(0), x)["params"]
  assert set(params) == {"conv"}
  want = _upsample_first(layer, params, x)
  got = layer.apply({"params": params}, x)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  cot = jnp.asarray(rng.normal(size=want.shape), jnp.float32)
  grad = lambda f: jax.grad(lambda p, x: jnp.sum(f(p, x) * cot), argnums=(0, 1))(params, x)
  g_got = grad(lambda p, x: layer.apply({"params": p}, x))
  g_want = grad(lambda p, x: _upsample_first(layer, p, x))
  for a, b in zip(jax.tree.leaves(g_got), jax.tree.leaves(g_want)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_bfloat16_compute_keeps_float32_params(rng):
  layer = jnn.UpsampleConv(4, 3, dtype=jnp.bfloat16)
  x = jnp.asarray(rng.normal(size=(1, 6, 6, 8)), jnp.float32)
  params = layer.init(jax.random.key(0), x)["params"]
  assert params["conv_layer"]["conv"]["kernel"].dtype == jnp.float32
  y = layer.apply({"params": params}, x)
  assert y.dtype == jnp.bfloat16 and y.shape == (1, 12, 12, 4)
  want = jnn.UpsampleConv(4, 3).apply({"params": params}, x)
  np.testing.assert_allclose(np.asarray(y, np.float32), want, rtol=5e-2, atol=5e-2)

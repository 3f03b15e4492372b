"""Reflection-padded convolutions without a padding pass (`jaxstyle.nn.reflect_conv`, the path
`ConvLayer` and the reflection-padded VGG take off CPU in 'border' mode), against PyTorch's
`ReflectionPad2d -> Conv2d` in float64, values and gradients, and `ConvLayer` against the CPU path
with the backend patched (the VGG's comparison is in test_gpu_paths)."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxstyle import nn as jnn
from jaxstyle import vgg
from jaxstyle.nn import reflect_conv

torch = pytest.importorskip("torch")
torch.set_num_threads(1)  # the test machine is small and shared


@pytest.fixture
def border():
  reflect_conv.set_mode("border")
  yield
  reflect_conv.set_mode("pass")


@pytest.fixture
def gpu(monkeypatch, border):
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")


def _nchw(x):
  return torch.from_numpy(np.ascontiguousarray(np.transpose(np.asarray(x, np.float64),
                                                            (0, 3, 1, 2))))


def _nhwc(t):
  return np.transpose(t.detach().numpy(), (0, 2, 3, 1))


def _torch_reflect_conv(x, kernel, bias, weight):
  """PyTorch float64 output and the gradients of sum(output * weight) for x, kernel and bias."""
  tx = _nchw(x).requires_grad_()
  tk = torch.from_numpy(np.transpose(np.asarray(kernel, np.float64), (3, 2, 0, 1)).copy())
  tk.requires_grad_()
  tb = torch.from_numpy(np.asarray(bias, np.float64)).requires_grad_()
  y = torch.nn.functional.conv2d(torch.nn.ReflectionPad2d(kernel.shape[0] // 2)(tx), tk, tb)
  (y * _nchw(weight)).sum().backward()
  return (_nhwc(y), _nhwc(tx.grad), np.transpose(tk.grad.numpy(), (2, 3, 1, 0)),
          tb.grad.numpy())


@pytest.mark.parametrize("shape,k,channels", [
    ((6, 5), 3, (3, 4)), ((2, 3), 3, (2, 2)), ((9, 8), 7, (3, 5)), ((4, 4), 7, (2, 3)),
    ((5, 10), 9, (3, 2)), ((12, 7), 5, (4, 4))])
def test_matches_torch_values_and_gradients(rng, shape, k, channels):
  cin, cout = channels
  x = rng.normal(size=(2, *shape, cin))
  kernel = rng.normal(size=(k, k, cin, cout))
  bias = rng.normal(size=(cout,))
  weight = rng.normal(size=(2, *shape, cout))
  want, *want_grads = _torch_reflect_conv(x, kernel, bias, weight)
  with jax.enable_x64(True):
    args = [jnp.asarray(a, jnp.float64) for a in (x, kernel, bias)]
    loss = lambda *a: jnp.sum(reflect_conv.conv_reflect_same(*a) * weight)
    np.testing.assert_allclose(reflect_conv.conv_reflect_same(*args), want, rtol=1e-10,
                               atol=1e-10)
    for got, ref in zip(jax.grad(loss, (0, 1, 2))(*args), want_grads):
      np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-10)


def test_correction_touches_only_the_border(rng):
  x = jnp.asarray(rng.normal(size=(1, 11, 12, 2)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(5, 5, 2, 3)), jnp.float32)
  corr = np.asarray(reflect_conv.frame_correction(x, kernel))
  assert np.all(corr[:, 2:-2, 2:-2] == 0)
  assert np.all(np.abs(corr[:, [0, 1, -2, -1]]).sum(axis=(0, 2, 3)) > 0)
  assert np.all(np.abs(corr[:, :, [0, 1, -2, -1]]).sum(axis=(0, 1, 3)) > 0)


def test_bad_shapes():
  with pytest.raises(ValueError, match="too small for this network: a 3x8 feature map cannot take 3 px"):
    reflect_conv.conv_reflect_same(jnp.zeros((1, 3, 8, 1)), jnp.zeros((7, 7, 1, 1)))
  with pytest.raises(ValueError, match="square odd"):
    reflect_conv.conv_reflect_same(jnp.zeros((1, 8, 8, 1)), jnp.zeros((4, 4, 1, 1)))


def test_applies_only_off_cpu_to_stride_one_size_keeping_layers(gpu):
  assert reflect_conv.applies(3, 1, 1) and reflect_conv.applies(9, 1, 4)
  assert not reflect_conv.applies(3, 2, 1)  # strided layers keep the padding pass
  assert not reflect_conv.applies(4, 1, 1)  # the 4x4 discriminator layers
  assert not reflect_conv.applies(1, 1, 0)
  assert not reflect_conv.applies(3, 1, 2)


def test_applies_in_border_mode_only_and_not_on_cpu(monkeypatch):
  assert reflect_conv.mode() == "pass"
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert not reflect_conv.applies(3, 1, 1)
  reflect_conv.set_mode("border")
  try:
    assert reflect_conv.applies(3, 1, 1)
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    assert not reflect_conv.applies(3, 1, 1)
  finally:
    reflect_conv.set_mode("pass")
  with pytest.raises(ValueError, match="must be one of"):
    reflect_conv.set_mode("edge")


@pytest.mark.parametrize("layer", [
    dict(features=4, kernel_size=3), dict(features=3, kernel_size=9),
    dict(features=5, kernel_size=7, use_bias=False), dict(features=4, kernel_size=3, upsample=3),
    dict(features=4, kernel_size=3, strides=2)])
def test_conv_layer_gpu_path_matches_cpu_path(rng, monkeypatch, border, layer):
  x = jnp.asarray(rng.normal(size=(2, 10, 9, 3)), jnp.float32)
  net = jnn.ConvLayer(**layer)
  params = net.init(jax.random.PRNGKey(0), x)
  loss = lambda p, x: jnp.sum(jnp.sin(net.apply(p, x)))
  want, want_grads = net.apply(params, x), jax.grad(loss, (0, 1))(params, x)
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert jax.tree.structure(net.init(jax.random.PRNGKey(0), x)) == jax.tree.structure(params)
  got, grads = net.apply(params, x), jax.grad(loss, (0, 1))(params, x)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def test_bfloat16_matches_float32(rng, gpu):
  x = jnp.asarray(rng.normal(size=(2, 16, 16, 8)), jnp.float32)
  net = jnn.ConvLayer(8, 3, dtype=jnp.bfloat16)
  params = net.init(jax.random.PRNGKey(0), x)
  got = net.apply(params, x)
  assert got.dtype == jnp.bfloat16
  want = jnn.ConvLayer(8, 3).apply(params, x)
  np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=0.05, atol=0.05)


def test_reflect_padded_vgg_convolves_zero_padded_maps_and_strips(rng, gpu):
  # Each layer: one convolution zero-padded inside the call and two VALID ones over thin strips.
  widths = (8, 16, 16, 16, 16)
  net = vgg.LossNet(params=vgg.init_params(0, 16, widths), depth=16, widths=widths,
                    padding="reflect")
  x = jnp.asarray(rng.uniform(size=(1, 16, 16, 3)), jnp.float32)
  text = str(jax.make_jaxpr(lambda x: net.features(x, ("relu3_1",)))(x))
  paddings = re.findall(r"conv_general_dilated\[[^\]]*?padding=(\(\([^\]]*?\)\))", text, re.S)
  assert sorted(paddings) == ["((0, 0), (0, 0))"] * 10 + ["((1, 1), (1, 1))"] * 5

"""The CPU fast paths of the shared layers: Winograd 3x3 convolutions and reshape pooling.

Each must equal the plain XLA/PyTorch computation it replaces, values and gradients, and keep the
parameters of the layer it stands in for.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxstyle import nn as jnn
from jaxstyle import vgg
from jaxstyle.nn import winograd

torch = pytest.importorskip("torch")
torch.set_num_threads(1)
F = torch.nn.functional

WIDE = (64, 128, 128, 128, 128)  # every layer from conv2_1 on runs by Winograd


def _direct(x, kernel):
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _rel(a, b):
  a, b = np.asarray(a), np.asarray(b)
  return np.abs(a - b).max() / np.abs(b).max()


def _plain(monkeypatch):
  monkeypatch.setattr(winograd, "applies", lambda *a, **k: False)


@pytest.mark.parametrize("separate", [False, True])  # one batched matmul or 16 separate ones
@pytest.mark.parametrize("shape,cout", [((2, 9, 12, 64), 128), ((1, 6, 5, 128), 64),
                                        ((1, 3, 3, 128), 128), ((1, 7, 8, 32), 32)])
def test_conv3x3_valid_matches_direct_convolution(rng, shape, cout, separate, monkeypatch):
  monkeypatch.setattr(winograd, "SEPARATE_TILES", 1 if separate else 10**9)
  x = jnp.asarray(rng.normal(size=shape).astype(np.float32))
  kernel = jnp.asarray(rng.normal(size=(3, 3, shape[-1], cout)).astype(np.float32))
  bias = jnp.asarray(rng.normal(size=(cout,)).astype(np.float32))
  want, want_vjp = jax.vjp(lambda x, k, b: _direct(x, k) + b, x, kernel, bias)
  got, got_vjp = jax.vjp(jax.jit(winograd.conv3x3_valid), x, kernel, bias)
  assert got.shape == want.shape == (shape[0], shape[1] - 2, shape[2] - 2, cout)
  assert _rel(got, want) < 1e-5
  g = jnp.asarray(rng.normal(size=want.shape).astype(np.float32))
  for got_g, want_g in zip(got_vjp(g), want_vjp(g)):
    assert _rel(got_g, want_g) < 1e-5


@pytest.mark.parametrize("separate", [False, True])
def test_frozen_transforms_match_and_give_no_weight_gradient(rng, separate, monkeypatch):
  monkeypatch.setattr(winograd, "SEPARATE_TILES", 1 if separate else 10**9)
  x = jnp.asarray(rng.normal(size=(2, 8, 7, 128)).astype(np.float32))
  kernel = jnp.asarray(rng.normal(size=(3, 3, 128, 64)).astype(np.float32))
  transformed = winograd.transform_frozen(kernel)
  g = jnp.asarray(rng.normal(size=(2, 6, 5, 64)).astype(np.float32))
  loss = lambda y: jnp.sum(y * g)
  want, want_dx = jax.value_and_grad(lambda x: loss(_direct(x, kernel)))(x)
  got, (got_dx, got_dt) = jax.jit(jax.value_and_grad(
      lambda x, t: loss(winograd.conv3x3_frozen(x, t)), argnums=(0, 1)))(x, transformed)
  assert abs(float(got) - float(want)) < 1e-4 * abs(float(want)) + 1e-3
  assert _rel(got_dx, want_dx) < 1e-5
  assert all(float(jnp.abs(t).max()) == 0 for t in jax.tree.leaves(got_dt))


@pytest.mark.parametrize("shape", [(2, 8, 7, 64), (1, 5, 6, 128), (1, 16, 16, 32)])
def test_frozen_zero_pad_is_same_convolution_with_its_input_gradient(rng, shape):
  # The zero-padded path computes the input gradient at the input's size only (no border tiles).
  x = jnp.asarray(rng.normal(size=shape).astype(np.float32))
  kernel = jnp.asarray(rng.normal(size=(3, 3, shape[-1], 48)).astype(np.float32))
  transformed = winograd.transform_frozen(kernel)
  g = jnp.asarray(rng.normal(size=shape[:3] + (48,)).astype(np.float32))
  same = lambda x: jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                                dimension_numbers=("NHWC", "HWIO", "NHWC"))
  want, want_dx = jax.value_and_grad(lambda x: jnp.sum(same(x) * g))(x)
  got, (got_dx, got_dt) = jax.jit(jax.value_and_grad(
      lambda x, t: jnp.sum(winograd.conv3x3_frozen(x, t, zero_pad=True) * g),
      argnums=(0, 1)))(x, transformed)
  assert abs(float(got) - float(want)) < 1e-5 * float(jnp.sum(jnp.abs(same(x) * g)))
  assert got_dx.shape == x.shape and _rel(got_dx, want_dx) < 1e-5
  assert all(float(jnp.abs(t).max()) == 0 for t in jax.tree.leaves(got_dt))


def test_applies_only_to_wide_float32_3x3_stride1_on_cpu():
  assert winograd.applies(128, 128, 3, 1) == (jax.default_backend() == "cpu")
  assert winograd.applies(64, 128, 3, 1, jnp.float32) == (jax.default_backend() == "cpu")
  assert winograd.applies(32, 64, 3, 1) == (jax.default_backend() == "cpu")
  assert not winograd.applies(16, 64, 3, 1)        # transforms cost more than they save
  assert not winograd.applies(512, 3, 3, 1)
  assert not winograd.applies(128, 128, 3, 2)
  assert not winograd.applies(128, 128, 5, 1)
  assert not winograd.applies(128, 128, 3, 1, jnp.bfloat16)


@pytest.mark.parametrize("padding", ["reflect", "zero"])
def test_conv_layer_winograd_path_keeps_params_and_matches_torch(rng, padding, monkeypatch):
  x = rng.normal(size=(2, 10, 9, 64)).astype(np.float32)
  layer = jnn.ConvLayer(128, 3, padding=padding)
  params = layer.init(jax.random.key(0), x)["params"]
  assert jax.tree.map(jnp.shape, params) == {"conv": {"kernel": (3, 3, 64, 128), "bias": (128,)}}
  loss = lambda p: jnp.sum(jnp.cos(layer.apply({"params": p}, x)))
  y = jax.jit(layer.apply)({"params": params}, x)
  grads = jax.jit(jax.grad(loss))(params)

  conv = torch.nn.Conv2d(64, 128, 3, padding=1 if padding == "zero" else 0)
  with torch.no_grad():
    conv.weight.copy_(torch.from_numpy(np.transpose(np.asarray(params["conv"]["kernel"]),
                                                    (3, 2, 0, 1)).copy()))
    conv.bias.copy_(torch.from_numpy(np.array(params["conv"]["bias"])))
  xt = torch.from_numpy(np.transpose(x, (0, 3, 1, 2)).copy())
  ref = conv(F.pad(xt, (1, 1, 1, 1), mode="reflect") if padding == "reflect" else xt)
  assert _rel(y, np.transpose(ref.detach().numpy(), (0, 2, 3, 1))) < 1e-5

  _plain(monkeypatch)  # the same layer through nn.Conv: same parameters, same gradients
  plain_grads = jax.jit(jax.grad(loss))(params)
  for name in ("kernel", "bias"):
    assert _rel(grads["conv"][name], plain_grads["conv"][name]) < 1e-5


def _torch_vgg(params, x, pooling, padding):
  h, out = torch.from_numpy(np.transpose(x, (0, 3, 1, 2)).copy()), {}
  for b, n in enumerate(vgg.BLOCKS[16], start=1):
    for i in range(1, n + 1):
      p = params[f"conv{b}_{i}"]
      w = torch.from_numpy(np.transpose(np.asarray(p["kernel"]), (3, 2, 0, 1)).copy())
      bias = torch.from_numpy(np.array(p["bias"]))
      h = (F.conv2d(F.pad(h, (1, 1, 1, 1), mode="reflect"), w, bias) if padding == "reflect"
           else F.conv2d(h, w, bias, padding=1))
      h = F.relu(h)
      out[f"relu{b}_{i}"] = h
    h = F.max_pool2d(h, 2) if pooling == "max" else F.avg_pool2d(h, 2)
  return {k: np.transpose(v.numpy(), (0, 2, 3, 1)) for k, v in out.items()}


@pytest.mark.parametrize("pooling,padding", [("max", "zero"), ("avg", "reflect")])
def test_wide_vgg_and_precomputed_transforms_match_torch(rng, pooling, padding, monkeypatch):
  params = vgg.init_params(3, 16, WIDE)
  net = vgg.LossNet(params=params, widths=WIDE, pooling=pooling, padding=padding)
  fast = net.with_winograd()
  if jax.default_backend() == "cpu":
    assert set(fast.winograd) == set(vgg.conv_names(16)[1:])  # all but the RGB conv1_1
  x01 = rng.uniform(size=(2, 35, 32, 3)).astype(np.float32)  # odd height: pooling floors
  layers = ("relu1_2", "relu2_1", "relu3_3", "relu4_2", "relu5_1")
  want = _torch_vgg(params, np.asarray(vgg.preprocess(x01, "caffe")), pooling, padding)
  loss = lambda n, x: sum(jnp.sum(jnp.tanh(v / 100.0)) for v in n.features(x, layers).values())
  grads = {}
  for name, n in (("fast", fast), ("in-graph", net)):
    got = jax.jit(lambda n, x: n.features(x, layers))(n, x01)
    for layer in layers:
      assert _rel(got[layer], want[layer]) < 1e-5, (name, layer)
    grads[name] = jax.jit(jax.grad(loss, argnums=1))(n, x01)
  _plain(monkeypatch)
  grads["plain"] = jax.jit(jax.grad(loss, argnums=1))(net, x01)
  assert _rel(grads["fast"], grads["plain"]) < 1e-4
  assert _rel(grads["in-graph"], grads["plain"]) < 1e-4


@pytest.mark.parametrize("pooling", ["max", "avg"])
def test_pool2x2_matches_reduce_window(rng, pooling):
  x = jnp.asarray(rng.normal(size=(2, 9, 8, 5)).astype(np.float32))  # no ties, odd height
  ref_pool = nn.max_pool if pooling == "max" else nn.avg_pool
  ref = lambda x: ref_pool(x, (2, 2), strides=(2, 2), padding="VALID")
  got = lambda x: vgg.pool2x2(x, pooling)
  assert got(x).shape == ref(x).shape == (2, 4, 4, 5)
  np.testing.assert_array_equal(got(x), ref(x))
  g = jnp.asarray(rng.normal(size=(2, 4, 4, 5)).astype(np.float32))
  np.testing.assert_allclose(jax.vjp(got, x)[1](g)[0], jax.vjp(ref, x)[1](g)[0], atol=1e-6)

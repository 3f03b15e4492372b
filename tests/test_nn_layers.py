"""Shared layers (`jaxstyle.nn`) against their PyTorch counterparts, with copied weights."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxstyle import nn as jnn

torch = pytest.importorskip("torch")
torch.set_num_threads(1)  # the test machine is small and shared

ATOL = 1e-4


def _to_nchw(x):
  return torch.from_numpy(np.array(np.transpose(np.asarray(x), (0, 3, 1, 2))))


def _to_nhwc(t):
  return np.transpose(t.detach().numpy(), (0, 2, 3, 1))


def _copy_conv(conv: "torch.nn.Conv2d", p):
  """Loads a Flax HWIO kernel + bias into a torch Conv2d (OIHW)."""
  with torch.no_grad():
    conv.weight.copy_(torch.from_numpy(np.transpose(np.asarray(p["kernel"]), (3, 2, 0, 1)).copy()))
    if conv.bias is not None:
      conv.bias.copy_(torch.from_numpy(np.array(p["bias"])))


def _copy_norm(norm: "torch.nn.InstanceNorm2d", p):
  with torch.no_grad():
    norm.weight.copy_(torch.from_numpy(np.array(p["scale"])))
    norm.bias.copy_(torch.from_numpy(np.array(p["bias"])))


def _init_apply(layer, x, seed):
  """Random params (NumPy, by shape) and the layer's output in one compiled program.

  Params are drawn with NumPy from the shapes Flax would create: compiling JAX's random initialisers
  costs seconds per layer on a small CPU, and random norm scales/biases (instead of 1/0) also catch
  mistakes that the default initialisation would hide.
  """
  shapes = jax.eval_shape(layer.init, jax.random.key(0), jnp.asarray(x))["params"]
  rng = np.random.default_rng(seed)
  params = jax.tree_util.tree_map(
      lambda s: jnp.asarray(0.5 * rng.normal(size=s.shape) + (1.0 if len(s.shape) == 1 else 0.0),
                            s.dtype), shapes)
  return params, jax.jit(layer.apply)({"params": params}, jnp.asarray(x))


def test_instance_stats_numpy(rng):
  x = rng.normal(size=(2, 5, 7, 3)).astype(np.float32) * 3 + 1
  mean, std = jnn.instance_stats(jnp.asarray(x), 1e-5)
  assert mean.shape == std.shape == (2, 1, 1, 3)
  np.testing.assert_allclose(mean, x.mean(axis=(1, 2), keepdims=True), atol=1e-5)
  np.testing.assert_allclose(std, np.sqrt(x.var(axis=(1, 2), keepdims=True) + 1e-5), rtol=1e-5)
  _, std1 = jnn.instance_stats(jnp.asarray(x), 1e-5, ddof=1)
  np.testing.assert_allclose(std1, np.sqrt(x.var(axis=(1, 2), ddof=1, keepdims=True) + 1e-5), rtol=1e-5)


def test_instance_norm_matches_torch(rng):
  x = rng.normal(size=(2, 6, 5, 4)).astype(np.float32) * 2 + 0.5
  layer = jnn.InstanceNorm()
  params, y = _init_apply(layer, x, 1)
  ref = torch.nn.InstanceNorm2d(4, affine=True)
  _copy_norm(ref, params)
  np.testing.assert_allclose(y, _to_nhwc(ref(_to_nchw(x))), atol=ATOL)


@pytest.mark.parametrize("per_sample", [False, True])
def test_instance_norm_gradient_matches_torch_autograd(rng, per_sample):
  # The written-out VJP against torch's autograd of the same normalisation, with a ReLU after it
  # (as in every network here) so that the incoming gradient is not smooth.
  b, c = 3, 4
  x = rng.normal(size=(b, 6, 5, c)).astype(np.float32) * 2 + 0.5
  shape = (b, c) if per_sample else (c,)
  scale = rng.normal(size=shape).astype(np.float32)
  bias = rng.normal(size=shape).astype(np.float32)
  up = rng.normal(size=x.shape).astype(np.float32)

  def loss(x, scale, bias):
    return jnp.sum(jax.nn.relu(jnn.instance_norm(x, scale, bias, 1e-5)) * up)

  value, grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(x, scale, bias)
  tx, ts, tb = (torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (x, scale, bias))
  t_hwc = tx.permute(0, 3, 1, 2)
  mean = t_hwc.mean(dim=(2, 3), keepdim=True)
  var = t_hwc.var(dim=(2, 3), unbiased=False, keepdim=True)
  view = (b if per_sample else 1, c, 1, 1)
  out = (t_hwc - mean) / torch.sqrt(var + 1e-5) * ts.reshape(view) + tb.reshape(view)
  ref = (torch.relu(out) * _to_nchw(up).double()).sum()
  ref.backward()
  np.testing.assert_allclose(value, ref.item(), rtol=1e-5)
  for got, want in zip(grads, (tx.grad, ts.grad, tb.grad)):
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-4)


def test_instance_norm_gradient_bf16(rng):
  x = jnp.asarray(rng.normal(size=(2, 8, 8, 3)) * 3 + 2, jnp.bfloat16)
  up = jnp.asarray(rng.normal(size=x.shape), jnp.float32)

  def loss(x, dtype):
    return jnp.sum(jnn.instance_norm(x, None, None, 1e-5, dtype).astype(jnp.float32) * up)

  g16 = jax.grad(loss)(x, jnp.bfloat16)
  g32 = jax.grad(loss)(x.astype(jnp.float32), jnp.float32)
  assert g16.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(g16, np.float32), g32, atol=0.05 * float(jnp.abs(g32).max()))
  # Normalisation removes the mean and scale: the gradient has no component along them.
  np.testing.assert_allclose(jnp.sum(g32, axis=(1, 2)), 0.0, atol=1e-4)


def test_instance_norm_bf16_uses_f32_statistics():
  # A large offset with a tiny spread: bf16 statistics would round the spread away entirely.
  x = (1000.0 + jnp.linspace(0.0, 1.0, 64).reshape(1, 8, 8, 1)).astype(jnp.float32)
  layer = jnn.InstanceNorm(use_scale=False, use_bias=False, dtype=jnp.bfloat16)
  y = layer.apply({}, x)
  assert y.dtype == jnp.bfloat16
  ref = (x - x.mean()) / jnp.sqrt(x.var() + 1e-5)
  np.testing.assert_allclose(np.asarray(y, np.float32), ref, atol=0.02)
  assert float(jnp.std(y.astype(jnp.float32))) > 0.9


@pytest.mark.parametrize("pad", [1, 3])
def test_reflect_pad_matches_torch(rng, pad):
  x = rng.normal(size=(2, 5, 6, 3)).astype(np.float32)
  y = jnn.reflect_pad(jnp.asarray(x), pad)
  ref = torch.nn.ReflectionPad2d(pad)(_to_nchw(x))
  np.testing.assert_array_equal(y, _to_nhwc(ref))
  with pytest.raises(ValueError):
    jnn.reflect_pad(jnp.asarray(x), 5)


@pytest.mark.parametrize("kernel,stride,padding,pad", [
    (3, 1, "reflect", None), (3, 2, "reflect", None), (9, 1, "reflect", None), (3, 2, "zero", None),
    (3, 1, "none", None), (4, 2, "zero", 1), (4, 1, "reflect", 1), (1, 1, "none", None),
    (1, 2, "none", None)])
def test_conv_layer_matches_torch(rng, kernel, stride, padding, pad):
  x = rng.normal(size=(2, 12, 10, 3)).astype(np.float32)
  layer = jnn.ConvLayer(5, kernel, strides=stride, padding=padding, pad=pad)
  params, y = _init_apply(layer, x, 2)
  pad = kernel // 2 if pad is None else pad
  mods = []
  if padding == "reflect":
    mods.append(torch.nn.ReflectionPad2d(pad))
  conv = torch.nn.Conv2d(3, 5, kernel, stride, padding=pad if padding == "zero" else 0)
  _copy_conv(conv, params["conv"])
  ref = torch.nn.Sequential(*mods, conv)(_to_nchw(x))
  assert y.shape == _to_nhwc(ref).shape
  np.testing.assert_allclose(y, _to_nhwc(ref), atol=ATOL)


@pytest.mark.parametrize("padding,k", [("reflect", 3), ("zero", 5)])
def test_per_sample_conv_matches_torch(rng, padding, k):
  x = rng.normal(size=(3, 7, 9, 4)).astype(np.float32)
  kernel = rng.normal(size=(3, k, k, 4, 5)).astype(np.float32)
  bias = rng.normal(size=(3, 5)).astype(np.float32)
  out = np.asarray(jnn.per_sample_conv(jnp.asarray(x), kernel, bias, padding=padding))
  mode = "reflect" if padding == "reflect" else "zeros"
  for b in range(3):
    conv = torch.nn.Conv2d(4, 5, k, padding=k // 2, padding_mode=mode)
    _copy_conv(conv, {"kernel": kernel[b], "bias": bias[b]})
    np.testing.assert_allclose(out[b], _to_nhwc(conv(_to_nchw(x[b:b + 1])))[0], atol=ATOL)
  with pytest.raises(ValueError, match="odd"):
    jnn.per_sample_conv(jnp.asarray(x), kernel[:, :2, :2])


def _conv_signatures(fn, *args):
  """(padding, strides, dilations, shapes) of every convolution in `fn`'s jaxpr, in order."""
  out = []

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "conv_general_dilated":
        p = eqn.params
        out.append((p["padding"], p["window_strides"], p["lhs_dilation"], p["rhs_dilation"],
                    tuple(v.aval.shape for v in eqn.invars)))
      for value in eqn.params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
          inner = item if hasattr(item, "eqns") else getattr(item, "jaxpr", None)
          if hasattr(inner, "eqns"):
            walk(inner)

  walk(jax.make_jaxpr(fn)(*args).jaxpr)
  return out


@pytest.mark.parametrize("kernel,stride,size",
                         [((9, 9), 1, 12), ((3, 3), 2, 11), ((4, 4), 2, 10), ((9, 1), 1, 12),
                          ((1, 1), 1, 5)])
def test_conv_valid_is_the_valid_convolution_and_its_gradient(rng, kernel, stride, size):
  """On CPU `conv_valid` convolves with one extra zero row and column and crops (a faster XLA:CPU
  path); its values and gradients must be the VALID convolution's, and its backward pass must run
  the VALID rule's convolutions (the padded convolution's kernel gradient is 2.5-5x slower)."""
  x = jnp.asarray(rng.normal(size=(2, size, size + 1, 3)).astype(np.float32))
  w = jnp.asarray(rng.normal(size=(*kernel, 3, 4)).astype(np.float32))
  ref = lambda x, w: jax.lax.conv_general_dilated(x, w, (stride, stride), "VALID",
                                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))
  got = lambda x, w: jnn.conv.conv_valid(x, w, stride)
  want = ref(x, w)
  assert got(x, w).shape == want.shape
  np.testing.assert_allclose(np.asarray(got(x, w)), np.asarray(want), rtol=1e-5, atol=1e-5)
  cotangent = jnp.asarray(rng.normal(size=want.shape).astype(np.float32))
  grads = lambda f: jax.grad(lambda x, w: jnp.sum(f(x, w) * cotangent), argnums=(0, 1))
  for g, g_ref in zip(grads(got)(x, w), grads(ref)(x, w)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), rtol=1e-4, atol=1e-4)
  # Forward: the padded convolution; backward: exactly the VALID convolution's (its primal
  # recomputation, which XLA drops as unused, then the input and kernel gradients). One image:
  # with more, the kernel gradient runs image by image (tests/test_kernel_grad.py).
  cotangent = cotangent[:1]
  signatures = _conv_signatures(grads(got), x[:1], w)
  assert signatures[0][0] == ((0, 1), (0, 1))
  assert signatures[1:] == _conv_signatures(grads(ref), x[:1], w)


@pytest.mark.parametrize("kernel", [3, 9])  # 9: the stacked-shift path of wide RGB kernels on CPU
def test_conv_layer_dtype_and_param_dtype(rng, kernel):
  x = jnp.asarray(rng.normal(size=(1, 12, 12, 3)), jnp.bfloat16)
  layer = jnn.ConvLayer(4, kernel, dtype=jnp.bfloat16)
  shapes = jax.eval_shape(layer.init, jax.random.key(0), x)["params"]
  assert shapes["conv"]["kernel"].dtype == jnp.float32
  params, y = _init_apply(layer, x, 0)
  assert y.dtype == jnp.bfloat16


@pytest.mark.parametrize("upsample,stride", [(2, 1), (1, 1), (2, 2)])
def test_upsample_conv_matches_torch(rng, upsample, stride):
  x = rng.normal(size=(2, 5, 6, 4)).astype(np.float32)
  layer = jnn.UpsampleConv(3, 3, upsample=upsample, strides=stride)
  params, y = _init_apply(layer, x, 3)
  conv = torch.nn.Conv2d(4, 3, 3, stride)
  _copy_conv(conv, params["conv_layer"]["conv"])
  ref = torch.nn.Sequential(torch.nn.Upsample(scale_factor=upsample, mode="nearest"),
                            torch.nn.ReflectionPad2d(1), conv)(_to_nchw(x))
  np.testing.assert_allclose(y, _to_nhwc(ref), atol=ATOL)


def _torch_conv_transpose(params, kernel, stride, padding, out_pad):
  """`torch.nn.ConvTranspose2d(3, 6, ...)` loaded with a `ConvTranspose`'s parameters."""
  ref = torch.nn.ConvTranspose2d(3, 6, kernel, stride, padding, output_padding=out_pad)
  p = params["conv_transpose"]
  with torch.no_grad():
    ref.weight.copy_(torch.from_numpy(np.transpose(np.asarray(p["kernel"]), (3, 2, 0, 1)).copy()))
    ref.bias.copy_(torch.from_numpy(np.array(p["bias"])))
  return ref


@pytest.mark.parametrize("kernel,stride,padding,out_pad", [(4, 2, 1, 0), (3, 2, 1, 1), (3, 1, 1, 0)])
def test_conv_transpose_matches_torch(rng, kernel, stride, padding, out_pad):
  x = rng.normal(size=(2, 5, 4, 3)).astype(np.float32)
  layer = jnn.ConvTranspose(6, kernel, strides=stride, padding=padding, output_padding=out_pad)
  params, y = _init_apply(layer, x, 4)
  ref = _torch_conv_transpose(params, kernel, stride, padding, out_pad)
  out = _to_nhwc(ref(_to_nchw(x)))
  assert y.shape == out.shape
  np.testing.assert_allclose(y, out, atol=ATOL)


@pytest.mark.parametrize("kernel,stride,padding,out_pad", [(4, 2, 1, 0), (3, 2, 1, 1)])
def test_conv_transpose_gradients_match_torch(rng, kernel, stride, padding, out_pad):
  """(4, 2, 1, 0) runs as phase convolutions on CPU (`subpixel.conv_transpose4x4`): no transposed
  (input-dilated) convolution may be left in its gradient, whose kernel part XLA:CPU runs slowly."""
  x = rng.normal(size=(2, 5, 4, 3)).astype(np.float32)
  layer = jnn.ConvTranspose(6, kernel, strides=stride, padding=padding, output_padding=out_pad)
  params, y = _init_apply(layer, x, 5)
  cot = rng.normal(size=y.shape).astype(np.float32)
  loss = lambda p, x: jnp.sum(layer.apply({"params": p}, x) * cot)
  g_params, g_x = jax.grad(loss, argnums=(0, 1))(params, jnp.asarray(x))
  ref = _torch_conv_transpose(params, kernel, stride, padding, out_pad)
  xt = _to_nchw(x).requires_grad_(True)
  (ref(xt) * _to_nchw(cot)).sum().backward()
  np.testing.assert_allclose(g_x, _to_nhwc(xt.grad), atol=ATOL)
  np.testing.assert_allclose(g_params["conv_transpose"]["kernel"],
                             np.transpose(ref.weight.grad.numpy(), (2, 3, 1, 0)), atol=ATOL)
  np.testing.assert_allclose(g_params["conv_transpose"]["bias"], ref.bias.grad.numpy(), atol=ATOL)
  dilated = [sig for sig in _conv_signatures(jax.grad(loss), params, jnp.asarray(x))
             if sig[2] != (1, 1)]
  assert not dilated if (kernel, stride, padding, out_pad) == (4, 2, 1, 0) else dilated


class _TorchResidual(torch.nn.Module):
  """pytorch/examples `fast_neural_style` ResidualBlock (reflect) or its unpadded variant."""

  def __init__(self, c, pad):
    super().__init__()
    self.pad = pad
    self.pad_layer = torch.nn.ReflectionPad2d(1) if pad else torch.nn.Identity()
    self.conv1, self.conv2 = torch.nn.Conv2d(c, c, 3), torch.nn.Conv2d(c, c, 3)
    self.in1 = torch.nn.InstanceNorm2d(c, affine=True)
    self.in2 = torch.nn.InstanceNorm2d(c, affine=True)

  def forward(self, x):
    y = torch.relu(self.in1(self.conv1(self.pad_layer(x))))
    y = self.in2(self.conv2(self.pad_layer(y)))
    return (x if self.pad else x[:, :, 2:-2, 2:-2]) + y


@pytest.mark.parametrize("padding", ["reflect", "none"])
def test_residual_block_matches_torch(rng, padding):
  x = rng.normal(size=(2, 9, 8, 4)).astype(np.float32)
  block = jnn.ResidualBlock(4, padding=padding)
  params, y = _init_apply(block, x, 5)
  ref = _TorchResidual(4, padding == "reflect")
  _copy_conv(ref.conv1, params["conv1"]["conv"])
  _copy_conv(ref.conv2, params["conv2"]["conv"])
  _copy_norm(ref.in1, params["norm1"])
  _copy_norm(ref.in2, params["norm2"])
  out = _to_nhwc(ref(_to_nchw(x)))
  assert y.shape == out.shape
  np.testing.assert_allclose(y, out, atol=ATOL)


def test_residual_block_rejects_channel_mismatch():
  with pytest.raises(ValueError, match="input channels"):
    jax.eval_shape(jnn.ResidualBlock(8).init, jax.random.key(0), jnp.zeros((1, 8, 8, 4)))

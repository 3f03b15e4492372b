"""The code paths jaxstyle takes on GPUs, traced and run on the CPU with the backend patched.

Layers pick their algorithm at trace time from `jax.default_backend()`; patching it makes the CPU
run what a GPU would (one-pass reflection padding, or `reflect_conv` in its 'border' mode), so its
values and gradients are checked here against PyTorch and against the CPU path. Also the GPU side of
the profile summary.
"""
import gzip
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxstyle import nn as jnn
from jaxstyle import vgg
from jaxstyle.benchmark import profile
from jaxstyle.nn import reflect_conv

torch = pytest.importorskip("torch")
torch.set_num_threads(1)  # the test machine is small and shared


@pytest.fixture
def gpu(monkeypatch):
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")


def _nchw(x):
  return torch.from_numpy(np.ascontiguousarray(np.transpose(np.asarray(x), (0, 3, 1, 2))))


def _nhwc(t):
  return np.transpose(t.detach().numpy(), (0, 2, 3, 1))


@pytest.mark.parametrize("shape,pad", [((5, 6), 1), ((7, 9), 3), ((4, 4), 3), ((2, 3), 1)])
def test_one_pass_reflect_pad_matches_torch(rng, gpu, shape, pad):
  x = jnp.asarray(rng.normal(size=(2, *shape, 3)), jnp.float32)
  y = jnn.reflect_pad(x, pad)
  np.testing.assert_array_equal(y, _nhwc(torch.nn.ReflectionPad2d(pad)(_nchw(x))))
  assert "concatenate" not in str(jax.make_jaxpr(lambda x: jnn.reflect_pad(x, pad))(x))
  # Gradients: a cotangent that differs everywhere, against the concatenating version's.
  w = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
  ref = lambda x: jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
  np.testing.assert_allclose(jax.grad(lambda x: jnp.sum(jnn.reflect_pad(x, pad) * w))(x),
                             jax.grad(lambda x: jnp.sum(ref(x) * w))(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode", reflect_conv.MODES)
def test_reflect_padded_vgg_gpu_path_matches_cpu_path(rng, monkeypatch, mode):
  # mode: how the GPU path pads ('pass': one-pass reflect_pad; 'border': reflect_conv).
  widths = (8, 16, 16, 16, 16)
  net = vgg.LossNet(params=vgg.init_params(0, 16, widths), depth=16, widths=widths,
                    padding="reflect")
  x = jnp.asarray(rng.uniform(size=(2, 16, 16, 3)), jnp.float32)
  layers = ("relu1_2", "relu3_1")
  loss = lambda x: sum(jnp.sum(jnp.sin(f)) for f in net.features(x, layers).values())
  want, want_grad = net.features(x, layers), jax.grad(loss)(x)
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  monkeypatch.setitem(reflect_conv._MODE, "mode", mode)  # pylint: disable=protected-access
  if mode == "pass":
    assert "concatenate" not in str(jax.make_jaxpr(lambda x: net.features(x, layers))(x))
  got, grad = net.features(x, layers), jax.grad(loss)(x)
  for name in layers:
    np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-4)
  # 'border' sums each border pixel in another order: a pre-activation that is exactly 0 on one
  # path (ReLU passes no gradient) can be a rounding error away from 0 on the other.
  atol = 1e-5 if mode == "pass" else 1e-4 * np.abs(want_grad).max()
  np.testing.assert_allclose(grad, want_grad, rtol=1e-4, atol=atol)


def test_profile_summary_counts_gpu_kernels_once(tmp_path):
  # A GPU trace holds each kernel on the device's stream line and again as host-side launch
  # events and device 'XLA Ops' spans; only the stream line may be counted.
  meta = lambda pid, tid, proc, thread: [
      {"ph": "M", "pid": pid, "name": "process_name", "args": {"name": proc}},
      {"ph": "M", "pid": pid, "tid": tid, "name": "thread_name", "args": {"name": thread}}]
  events = (meta(1, 14, "/device:GPU:0", "Stream #14(Compute)")
            + meta(1, 2, "/device:GPU:0", "XLA Ops") + meta(7, 3, "/host:CPU", "python"))
  for call in range(2):
    t = 1000.0 * call
    events += [
        {"ph": "X", "pid": 1, "tid": 14, "ts": t, "dur": 300.0, "name": "loop_add_fusion_1"},
        {"ph": "X", "pid": 1, "tid": 14, "ts": t + 300, "dur": 100.0, "name": "sm90_xmma_fprop"},
        {"ph": "X", "pid": 1, "tid": 2, "ts": t, "dur": 400.0, "name": "add.3"},
        {"ph": "X", "pid": 7, "tid": 3, "ts": t, "dur": 7.0, "name": "loop_add_fusion_1"}]
  path = tmp_path / "t.trace.json.gz"
  with gzip.open(path, "wt") as f:
    json.dump({"traceEvents": events}, f)
  summary = profile.summarize(str(path), calls=2)
  assert summary["total_ms"] == pytest.approx(0.4)
  assert summary["kinds"] == [["loop_add_fusion", 0.3], ["sm90_xmma_fprop", 0.1]]
  assert summary["categories"] == [["elementwise / other fusion", 0.3],
                                   ["convolution forward", 0.1]]
  assert summary["launches"] == 2
  assert ["/device:GPU:0 / XLA Ops", 0.4] in summary["lines"]


@pytest.mark.parametrize("name,label", [
    # Kernel names seen in H200 traces of the MSG-Net and AdaIN train steps.
    ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc", "convolution forward"),
    ("cudnn_generated_fort_native_sm80_convFwd_pointwise_knob_21", "convolution forward"),
    ("void cutlass__5x_cudnn::Kernel<cutlass_tensorop_bf16_s16816dgrad_optimized_bf16>",
     "convolution input gradient"),
    ("sm80_xmma_wgrad_implicit_gemm_indexed_bf16bf16", "convolution kernel gradient"),
    ("_ZN17cutlass__5x_cudnn6KernelINS_4conv6kernel23ImplicitGemmConvolution",
     "convolution, other"),
    ("nvjet_sm90_tst_64x64_64x13_1x2_h_bz_splitK_NTT", "matrix product"),
    ("gemm_fusion_dot_general_34", "matrix product"),
    ("input_transpose_fusion_15", "transpose fusion"),
    ("input_concatenate_fusion_8", "concatenate fusion"),
    ("input_multiply_reduce_fusion_2", "reduction fusion"),
    ("Memset 3", "copy / memset"),
    ("loop_select_fusion_4", "elementwise / other fusion"),
    ("wrapped_convert", "elementwise / other fusion"),
    ("nhwcAddPaddingKernel", "other"),
    # XLA:CPU
    ("ynn_fusion.12", "CPU library call (convolutions, products)"),
    ("dot.3", "matrix product"),
    ("stack.12", "concatenate fusion"),
    ("add_bitcast_fusion", "elementwise / other fusion")])
def test_profile_categories(name, label):
  assert profile.category(name) == label

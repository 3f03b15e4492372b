"""ONNX export (jaxstyle/export): each graph run by onnxruntime against the library's `stylize`,
at odd sizes that need the dynamic padding, and `launch/stylize.py --export_onnx` end to end."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxstyle import api
from jaxstyle import export
from jaxstyle import nn as jsnn
from jaxstyle import vgg
from jaxstyle.errors import ConfigError
from jaxstyle.export import networks
from jaxstyle.export.onnx_graph import Graph
from jaxstyle.methods import adain
from jaxstyle.methods import johnson
from jaxstyle.methods import magenta
from jaxstyle.methods import msgnet
from jaxstyle.methods import stylebank
from jaxstyle.methods.adain import model as adain_model
from jaxstyle.methods.magenta import model as magenta_model
from jaxstyle.methods.magenta import trainer as magenta_trainer
from jaxstyle.methods.stylebank import inference as stylebank_inference

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = ((37, 50), (48, 64))  # one odd (padded to 40x52, cropped back), one a multiple of 4


def _perturbed(params, seed, out_layer, gain):
  """Random norm affines and biases (Flax initialises them to 1/0, which would hide a swap), and
  an output layer scaled so that results span [0, 1] rather than sit in one clipped value."""
  leaves, tree = jax.tree_util.tree_flatten_with_path(params)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  out = []
  for (path, x), k in zip(leaves, keys):
    names = [getattr(p, "key", "") for p in path]
    x = x + 0.3 * jax.random.normal(k, x.shape) if names[-1] in ("scale", "bias") else x
    out.append(x * gain if out_layer in names and names[-1] == "kernel" else x)
  return jax.tree_util.tree_unflatten(tree, out)


def _run(model, content01):
  session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
  x = np.ascontiguousarray(np.stack(content01).transpose(0, 3, 1, 2))
  return session.run(None, {"content": x})[0].transpose(0, 2, 3, 1)


def _check(model, stylize, rng):
  for h, w in SIZES:
    contents = [rng.random((h, w, 3)).astype(np.float32) for _ in range(2)]  # a batch of two
    got = _run(model, contents)
    for g, c in zip(got, contents):
      want = stylize(c)
      assert 0.2 < np.mean((want > 0.01) & (want < 0.99)), "mostly clipped: values untested"
      np.testing.assert_allclose(g, want, atol=2e-4)


def test_johnson_graph_matches_stylize(rng):
  """The tanh output (the released .pth files' linear one runs in the launcher test below)."""
  config = johnson.JohnsonConfig(width=0.25, num_residual=2)
  net = johnson.TransformerNet(config)
  params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))["params"]
  params = _perturbed(params, 1, "out_conv", 0.3)
  _check(networks.johnson(params, config), lambda c: johnson.stylize(net, params, c), rng)


def test_msgnet_graph_folds_the_style_in(rng):
  """The reference's norms without affine maps (Johnson's test covers the affine ones)."""
  config = msgnet.MSGNetConfig(ngf=8, stem_features=16, n_blocks=2)
  net = msgnet.MSGNet(config)
  params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)),
                    jnp.zeros((1, 32, 32)))["params"]
  params = _perturbed(params, 2, "out_conv", 30.0)
  params["comatch"]["weight"] = params["comatch"]["weight"] * 50.0
  styles = [rng.random((40, 44, 3)).astype(np.float32), rng.random((32, 24, 3)).astype(np.float32)]
  gram = msgnet.style_gram(net, params, styles, style_weights=[0.3, 0.7])
  model = networks.msgnet(params, config, np.asarray(gram))
  _check(model, lambda c: msgnet.stylize(net, params, c, styles, style_weights=[0.3, 0.7]), rng)
  other = networks.msgnet(params, config, np.asarray(msgnet.style_gram(net, params, styles[:1])))
  x = [rng.random((32, 32, 3)).astype(np.float32)]
  assert np.abs(_run(model, x) - _run(other, x)).max() > 1e-2  # the style is in the graph


@pytest.mark.parametrize("convention,depth,gain", [("caffe", 16, 0.02), ("torchvision", 19, 1.0)])
def test_adain_graph_takes_any_style_and_alpha(convention, depth, gain, rng):
  config = adain.AdaINConfig(width=1 / 16)
  encoder = adain_model.encoder_net(vgg.random_loss_net(1, depth, convention=convention), config)
  decoder = adain_model.make_decoder(config, depth)
  params = decoder.init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 32)))["params"]
  params = _perturbed(params, 4, "conv1_1", gain)
  model = adain.AdaINModel(decoder=decoder, encoder=encoder)
  graph = networks.adain(params, config, encoder, alpha=0.7)
  session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
  for (h, w), style_shape in zip(SIZES, [(30, 41, 3), (64, 48, 3)]):
    content = rng.random((h, w, 3)).astype(np.float32)
    style = rng.random(style_shape).astype(np.float32)
    for alpha in (None, 0.3):  # None: the input's default, the exported --alpha
      want = adain.stylize(model, params, content, [style], alpha=alpha or 0.7)
      assert 0.2 < np.mean((want > 0.01) & (want < 0.99)), "mostly clipped: values untested"
      feed = {"content": _nchw(content), "style": _nchw(style)}
      if alpha is not None:
        feed["alpha"] = np.asarray(alpha, np.float32)
      got = session.run(None, feed)[0][0].transpose(1, 2, 0)
      np.testing.assert_allclose(got, want, atol=2e-4)


def _nchw(x):
  return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


@pytest.mark.parametrize("upsample,bank_layers", [("nearest", 1), ("transpose", 2)])
def test_stylebank_graph_mixes_the_banks_at_run_time(upsample, bank_layers, rng):
  """Default weights = the request's fusion (alpha included); fed weights pick other banks."""
  config = stylebank.StyleBankConfig(width=0.25, bank_layers=bank_layers, upsample=upsample)
  net = stylebank.StyleBankNet(config)
  params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)), 3)
  params = _perturbed(params, 5, "out", 40.0)
  default = stylebank_inference.bank_weights(3, [0, 2], [0.3, 0.7], alpha=0.8)[0]
  session = ort.InferenceSession(networks.stylebank(params, config, default).SerializeToString(),
                                 providers=["CPUExecutionProvider"])
  content = rng.random((37, 50, 3)).astype(np.float32)
  cases = [(None, dict(style_index=[0, 2], style_weights=[0.3, 0.7], alpha=0.8)),
           ([0.0, 1.0, 0.0], dict(style_index=[1])),
           ([0.0, 0.0, 0.0], dict(alpha=0.0))]  # no bank: the auto-encoder
  outs = []
  for fed, controls in cases:
    want = stylebank.stylize(net, params, content, **controls)
    assert 0.2 < np.mean((want > 0.01) & (want < 0.99)) and want.std() > 0.05
    feed = {"content": _nchw(content)}
    if fed is not None:
      feed["bank_weights"] = np.asarray(fed, np.float32)
    outs.append(session.run(None, feed)[0][0].transpose(1, 2, 0))
    np.testing.assert_allclose(outs[-1], want, atol=2e-4)
  assert np.abs(outs[0] - outs[1]).max() > 1e-2


def test_magenta_graph_predicts_the_style(rng):
  config = magenta.MagentaConfig(width=1 / 8, num_residual=2, bottleneck=8)
  loss_net = magenta_trainer.loss_net_for(vgg.random_loss_net(2, 16), config)
  net = magenta_model.ArbitraryStyleNet(config)
  pooled = sum(loss_net.channels(k) for k in config.predictor_layers)
  params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)), jnp.zeros((1, pooled)))
  # Random heads, so that each layer's gamma/beta really depend on the embedding.
  params = jax.tree_util.tree_map(
      lambda a: a + 0.2 * jax.random.normal(jax.random.PRNGKey(3), a.shape), params["params"])
  model = magenta.MagentaModel(net, loss_net)
  graph = networks.magenta(params, config, loss_net, alpha=0.6)
  session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
  content = rng.random((37, 50, 3)).astype(np.float32)
  styles = [rng.random((30, 41, 3)).astype(np.float32), rng.random((44, 36, 3)).astype(np.float32)]
  outs = []
  for style, alpha in ((styles[0], None), (styles[0], 0.0), (styles[1], 1.0)):
    want = magenta.stylize(model, params, content, [style], alpha=0.6 if alpha is None else alpha)
    assert 0.2 < np.mean((want > 0.01) & (want < 0.99)) and want.std() > 0.05
    feed = {"content": _nchw(content), "style": _nchw(style)}
    if alpha is not None:
      feed["alpha"] = np.asarray(alpha, np.float32)
    outs.append(session.run(None, feed)[0][0].transpose(1, 2, 0))
    np.testing.assert_allclose(outs[-1], want, atol=2e-4)
  assert min(np.abs(outs[i] - outs[j]).max() for i, j in ((0, 1), (0, 2), (1, 2))) > 1e-2


@pytest.mark.parametrize("kw", [dict(), dict(strides=2), dict(padding="zero", strides=2),
                                dict(padding="none"), dict(upsample=2), dict(pad=1)])
def test_conv_layer_mirror(kw, rng):
  layer = jsnn.ConvLayer(5, 1 if kw.get("padding") == "none" else 3, **kw)
  x = rng.random((1, 9, 11, 4)).astype(np.float32)
  params = layer.init(jax.random.PRNGKey(0), x)["params"]
  g = Graph("conv")
  y = g.conv_layer("content", params, **kw)
  session = ort.InferenceSession(_single_io(g, y, 4).SerializeToString())
  got = session.run(None, {"content": x.transpose(0, 3, 1, 2)})[0].transpose(0, 2, 3, 1)
  np.testing.assert_allclose(got, np.asarray(layer.apply({"params": params}, x)), atol=1e-5)


def _single_io(g, out, channels):
  """A model around one layer (channels in != 3, so built without `Graph.model`'s checks)."""
  onnx = g.onnx
  info = onnx.helper.make_tensor_value_info
  graph = onnx.helper.make_graph(g.nodes, "layer", [info("content", onnx.TensorProto.FLOAT,
                                                         [1, channels, None, None])],
                                 [info(out, onnx.TensorProto.FLOAT, None)],
                                 initializer=g.initializers)
  return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])


def test_refusals(tmp_path):
  with pytest.raises(ConfigError,
                     match="supports johnson, msgnet, stylebank, adain, magenta, not gatys"):
    export.export_onnx(api.StylizeRequest(method="gatys", content=None))
  with pytest.raises(ConfigError, match="cannot export Johnson output"):
    networks.johnson({}, johnson.JohnsonConfig(output="sigmoid", num_residual=0))


# --------------------------------------------------------------------------------------------------
# launch/stylize.py --export_onnx


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  """Narrow released-format models (pytorch/examples .pth, 21styles.model) and two images."""
  torch = pytest.importorskip("torch")
  from _released_nets import ExamplesTransformerNet, MultiStyleNet  # noqa: E402  (needs torch)
  d = tmp_path_factory.mktemp("export")
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 255, (30, 42, 3), np.uint8)).save(str(d / "content.png"))
  Image.fromarray(rng.integers(0, 255, (20, 20, 3), np.uint8)).save(str(d / "style.png"))
  torch.manual_seed(0)
  for net, name in ((ExamplesTransformerNet(c1=8, num_residual=1), "tiny.pth"),
                    (MultiStyleNet(stem=16, ngf=8, n_blocks=2), "tiny.model")):
    last = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
      last.weight.mul_(300.0)
      last.bias.fill_(128.0)
    torch.save(net.state_dict(), str(d / name))
  return d


@pytest.mark.parametrize("method,model", [("johnson", "tiny.pth"), ("msgnet", "tiny.model")])
def test_launcher_writes_a_checked_model(files, method, model):
  out = files / f"{method}.onnx"
  r = _launch([f"--method={method}", f"--checkpoint={model}", "--content=content.png",
               "--style=style.png", "--size=42", f"--export_onnx={out}"], files)
  assert r.returncode == 0, r.stderr
  assert "matches jaxstyle to" in r.stdout and "on a 42x30 image" in r.stdout, r.stdout
  onnx = pytest.importorskip("onnx")
  proto = onnx.load(str(out))
  assert {p.key: p.value for p in proto.metadata_props}["method"] == method
  assert not (files / "out").exists()  # no image is written
  assert not [f for f in os.listdir(files) if f.startswith(".tmp-")]


@pytest.mark.parametrize("args,message", [
    (["--method=tspr", "--checkpoint=tiny.pth"],
     "--export_onnx supports johnson, msgnet, stylebank, adain, magenta, not tspr"),
    (["--method=johnson", "--checkpoint=tiny.pth", "--content=."], "not a folder"),
    (["--method=johnson", "--checkpoint=tiny.pth", "--grid"], "--grid and --tile do not apply"),
    (["--method=johnson", "--checkpoint=tiny.pth", "--tile=128"], "--grid and --tile do not apply"),
    (["--method=johnson", "--checkpoint=tiny.pth", "--export_onnx=model.png"],
     "must end in one of .onnx"),
])
def test_launcher_errors_are_one_line(files, args, message):
  target = files / "bad.onnx"
  r = _launch([f"--export_onnx={target}"] + args, files)  # a later --export_onnx wins
  assert r.returncode == 2 and message in r.stderr, r.stderr
  assert len(r.stderr.strip().splitlines()) == 1, r.stderr
  assert not target.exists() and not (files / "model.png").exists()


def test_requests_the_graphs_cannot_hold(files):
  content = np.zeros((16, 16, 3), np.float32)
  for method, extra, message in (
      ("magenta", dict(checkpoint="published"), "the published Magenta model is not exported"),
      ("johnson", dict(checkpoint=str(files / "tiny.pth"), preserve_color="luminance"),
       "--preserve_color is applied outside the network"),
      ("msgnet", dict(checkpoint=str(files / "tiny.model"), preserve_color="histogram"),
       "--preserve_color is applied outside the network")):
    with pytest.raises(ConfigError, match=message):
      export.export_onnx(api.StylizeRequest(method=method, content=content, styles=[content],
                                            **extra))


def test_a_graph_that_differs_is_refused(rng):
  config = johnson.JohnsonConfig(width=0.25, num_residual=1, output="linear")
  net = johnson.TransformerNet(config)
  params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))["params"]
  params = _perturbed(params, 3, "out_conv", 40.0)
  content = rng.random((24, 28, 3)).astype(np.float32)
  model = networks.johnson(params, config)
  assert export.compare(model, lambda c: johnson.stylize(net, params, c), content) < 2e-4
  with pytest.raises(export.ExportError, match="the ONNX graph differs from jaxstyle"):
    export.compare(model, lambda c: johnson.stylize(net, params, c) * 0.9, content)


def _launch(args, d):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(JAXSTYLE_CACHE=str(d / "cache"), JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  return subprocess.run([sys.executable, os.path.join(ROOT, "launch", "stylize.py")] + args,
                        cwd=str(d), env=env, text=True, capture_output=True, timeout=600)

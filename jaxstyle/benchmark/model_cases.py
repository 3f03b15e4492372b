"""Benchmark cases of the feed-forward methods: inference and one real train step each.

Every case uses the method's default architecture (its config dataclass with no overrides) with
randomly initialised parameters; the loss network is a full-width VGG16 with random weights (speed
does not depend on the values, and the benchmark then needs no downloaded weights). Train steps are
the trainers' own `train_step` functions with the state donated, as the training loop runs them.
"""
import functools
from typing import Callable, Dict, List

import jax
import jax.numpy as jnp
import numpy as np

from jaxstyle import vgg
from jaxstyle.benchmark.case import Case

FEEDFORWARD = ("johnson", "msgnet", "stylebank", "adain", "magenta", "tspr")


@functools.lru_cache(maxsize=1)
def random_vgg16() -> vgg.LossNet:
  """Full-width VGG16 with random weights in the Caffe convention (the default HED layout)."""
  return vgg.LossNet(params=vgg.init_params(0, 16), depth=16)


def _images(seed: int, batch: int, size: int) -> jax.Array:
  return jnp.asarray(np.random.default_rng(seed).uniform(size=(batch, size, size, 3)), jnp.float32)


def _train_case(method, trainer, batch_dict, batch, note=""):
  state = trainer.init(jax.random.key(0), batch_dict)
  # One buffer per leaf: an init may put the same array in two places (TSPR starts its main decoder
  # as the auxiliary one), and a donated state cannot hold a buffer twice.
  state = jax.tree.map(lambda a: a.copy() if isinstance(a, jax.Array) else a, state)
  return Case(method, "train", "", trainer.train_step, (state, batch_dict, jax.random.key(1)), batch,
              donate_argnums=(0,), carry=True, note=note)


# --------------------------------------------------------------------------------------------------


def johnson_cases(size, batch, dtype, kinds) -> List[Case]:
  from jaxstyle.methods import johnson  # pylint: disable=g-import-not-at-top
  config = johnson.JohnsonConfig()
  model = johnson.TransformerNet(config, dtype=dtype)
  x = _images(0, batch, size)
  out = []
  if "inference" in kinds:
    params = jax.jit(johnson.TransformerNet(config).init)(jax.random.key(0), x[:1])["params"]

    def infer(params, x):
      return model.apply({"params": params}, x)

    def twin():
      from jaxstyle.benchmark import torch_cases  # pylint: disable=g-import-not-at-top
      return torch_cases.johnson_twin(config, params, x, dtype)

    out.append(Case("johnson", "inference", "", infer, (params, x), batch,
                    reference=lambda y: y, fresh_args=lambda: (params, x), torch=twin))
  if "train" in kinds:
    style = np.asarray(_images(2, 1, size)[0])
    trainer = johnson.JohnsonTrainer(config, random_vgg16(), style, dtype=dtype)
    out.append(_train_case("johnson", trainer, {"content": x}, batch))
  return out


def msgnet_cases(size, batch, dtype, kinds) -> List[Case]:
  from jaxstyle.methods import msgnet  # pylint: disable=g-import-not-at-top
  config = msgnet.MSGNetConfig()
  model = msgnet.MSGNet(config, dtype=dtype)
  x, style = _images(0, batch, size), _images(2, 1, size)
  out = []
  if "inference" in kinds:
    c = config.comatch_features
    params = jax.jit(msgnet.MSGNet(config).init)(jax.random.key(0), x[:1],
                                                 jnp.zeros((1, c, c)))["params"]
    gram = jax.jit(functools.partial(model.apply, method=msgnet.MSGNet.style_gram))(
        {"params": params}, style)

    def infer(params, x, gram):
      return model.apply({"params": params}, x, gram)

    def twin():
      from jaxstyle.benchmark import torch_cases  # pylint: disable=g-import-not-at-top
      return torch_cases.msgnet_twin(config, params, x, gram, dtype)

    out.append(Case("msgnet", "inference", "", infer, (params, x, gram), batch,
                    reference=lambda y: y, fresh_args=lambda: (params, x, gram), torch=twin,
                    note="style Gram precomputed (a fixed style), as in a video stream"))
  if "train" in kinds:
    trainer = msgnet.MSGNetTrainer(config, random_vgg16(), dtype=dtype)
    out.append(_train_case("msgnet", trainer, {"content": x, "style": style}, batch,
                           note=f"style image {size} px"))
  return out


def adain_cases(size, batch, dtype, kinds) -> List[Case]:
  from jaxstyle.methods import adain  # pylint: disable=g-import-not-at-top
  from jaxstyle.methods.adain import model as adain_model  # pylint: disable=g-import-not-at-top
  from jaxstyle.nn import adaptive  # pylint: disable=g-import-not-at-top
  config = adain.AdaINConfig()
  encoder = adain_model.encoder_net(random_vgg16(), config)
  decoder = adain_model.make_decoder(config, encoder.depth, dtype=dtype)
  x, style = _images(0, batch, size), _images(2, batch, size)
  out = []
  if "inference" in kinds:
    t0 = jnp.zeros((1, size // 8, size // 8, 512), jnp.float32)
    params = jax.jit(adain_model.make_decoder(config, encoder.depth).init)(
        jax.random.key(0), t0)["params"]
    layer = adain_model.ENCODER_LAYER

    def infer(params, encoder, x, style):
      f_c = adain_model.encode(encoder, x, (layer,), dtype)[layer]
      f_s = adain_model.encode(encoder, style, (layer,), dtype)[layer]
      return decoder.apply({"params": params}, adaptive.adain(f_c, f_s, config.eps))

    def twin():
      from jaxstyle.benchmark import torch_cases  # pylint: disable=g-import-not-at-top
      return torch_cases.adain_twin(config, encoder, params, x, style, dtype)

    out.append(Case("adain", "inference", "", infer, (params, encoder, x, style), batch,
                    reference=lambda y: y, fresh_args=lambda: (params, encoder, x, style),
                    torch=twin, note="encodes content and style per image"))
  if "train" in kinds:
    trainer = adain.AdaINTrainer(config, random_vgg16(), dtype=dtype)
    out.append(_train_case("adain", trainer, {"content": x, "style": style}, batch))
  return out


def stylebank_cases(size, batch, dtype, kinds) -> List[Case]:
  from jaxstyle.methods import stylebank  # pylint: disable=g-import-not-at-top
  config = stylebank.StyleBankConfig()
  net = stylebank.StyleBankNet(config, dtype)
  x = _images(0, batch, size)
  ids = jnp.zeros((batch,), jnp.int32)
  out = []
  if "inference" in kinds:
    params = stylebank.StyleBankNet(config).init(jax.random.key(0), x[:1], 1)
    out.append(Case("stylebank", "inference", "", net, (params, x, ids), batch,
                    reference=lambda y: y))
  if "train" in kinds:
    styles = [np.asarray(_images(2, 1, size)[0])]
    trainer = stylebank.StyleBankTrainer(config, random_vgg16(), styles, dtype=dtype)
    out.append(_train_case("stylebank", trainer, {"content": x, "style_id": ids}, batch,
                           note="T=2 schedule: lax.cond picks the stylize or auto-encoder branch"))
  return out


def magenta_cases(size, batch, dtype, kinds) -> List[Case]:
  from jaxstyle.methods import magenta  # pylint: disable=g-import-not-at-top
  from jaxstyle.methods.magenta import model as magenta_model  # pylint: disable=g-import-not-at-top
  from jaxstyle.methods.magenta import trainer as magenta_trainer  # pylint: disable=g-import-not-at-top
  config = magenta.MagentaConfig()
  loss_net = magenta_trainer.loss_net_for(random_vgg16(), config)
  net = magenta.ArbitraryStyleNet(config, dtype=dtype)
  x, style = _images(0, batch, size), _images(2, batch, size)
  out = []
  if "inference" in kinds:
    layers = tuple(config.predictor_layers)
    pooled = jax.jit(lambda net, s: magenta_model.pooled_features(net.features(s, layers), layers))(
        loss_net, style[:1])
    params = jax.jit(magenta.ArbitraryStyleNet(config).init)(jax.random.key(0), x[:1],
                                                              pooled)["params"]

    def infer(params, loss_net, x, style):
      pooled = magenta_model.pooled_features(loss_net.features(style, layers, dtype=dtype), layers)
      return net.apply({"params": params}, x, pooled.astype(jnp.float32))

    out.append(Case("magenta", "inference", "", infer, (params, loss_net, x, style), batch,
                    reference=lambda y: y, note="style prediction (VGG) + transformer per image"))
  if "train" in kinds:
    trainer = magenta.MagentaTrainer(config, random_vgg16(), dtype=dtype)
    out.append(_train_case("magenta", trainer, {"content": x, "style": style}, batch))
  return out


def tspr_cases(size, batch, dtype, kinds) -> List[Case]:
  from jaxstyle.methods import tspr  # pylint: disable=g-import-not-at-top
  from jaxstyle.methods.tspr import trainer as tspr_trainer  # pylint: disable=g-import-not-at-top
  config = tspr.TSPRConfig()
  x, style = _images(0, batch, size), _images(2, batch, size)
  out = []
  if "inference" in kinds:
    gen, _ = tspr_trainer.build_models(config, dtype)
    init_gen, _ = tspr_trainer.build_models(config)
    variables = jax.jit(init_gen.init)(jax.random.key(0), x[:1] * 2 - 1, x[:1] * 2 - 1)

    def infer(variables, x, style):
      def run(m):
        return m.decode(m.recombine(m.encode(x * 2 - 1), m.encode(style * 2 - 1)))
      return (gen.apply(variables, method=run) + 1) * 0.5

    out.append(Case("tspr", "inference", "", infer, (variables, x, style), batch,
                    reference=lambda y: y, note="one peer (style) image per content image"))
  if "train" in kinds:
    trainer = tspr.TSPRTrainer(config, global_batch=batch, image_size=size, dtype=dtype)
    b = {"content": x, "content_peer": x[::-1], "style": style, "style_peer": style[::-1],
         "label": jnp.zeros((batch,), jnp.int32)}
    out.append(_train_case("tspr", trainer, b, batch, note="generator + discriminator step"))
  return out


BUILDERS: Dict[str, Callable[..., List[Case]]] = {
    "johnson": johnson_cases, "msgnet": msgnet_cases, "stylebank": stylebank_cases,
    "adain": adain_cases, "magenta": magenta_cases, "tspr": tspr_cases,
}

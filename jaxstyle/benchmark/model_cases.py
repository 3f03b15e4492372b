"""Benchmark cases of the feed-forward methods: inference and one real train step each.

Every case uses the method's default architecture (its config dataclass with no overrides; `width`
scales every channel count, for smoke tests) with randomly initialised parameters; the loss network
is a VGG16 with random weights (speed does not depend on the values, and the benchmark then needs
no downloaded weights). Train steps are the trainers' own `train_step` functions with the state
donated, as the training loop runs them. PyTorch twins: `torch_cases` (inference), `torch_train`
(one Adam step of Johnson, MSG-Net, AdaIN, StyleBank and Magenta) and `torch_tspr_train` (TSPR's
three phases); train twins are float32 only.
"""
import functools
import importlib
from typing import Callable, Dict, List, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxstyle import vgg
from jaxstyle import xla_options
from jaxstyle.benchmark.case import Case
from jaxstyle.train import loop

FEEDFORWARD = ("johnson", "msgnet", "stylebank", "adain", "magenta", "tspr")


def scaled(channels: int, width: float, least: int = 1) -> int:
  return max(least, int(round(channels * width)))


@functools.lru_cache(maxsize=2)
def random_vgg16(width: float = 1.0) -> vgg.LossNet:
  """VGG16 with random weights in the Caffe convention (the default HED layout), `width` x wide."""
  widths = tuple(scaled(c, width) for c in vgg.WIDTHS)
  return vgg.LossNet(params=vgg.init_params(0, 16, widths), depth=16, widths=widths).with_winograd()


def _images(seed: int, batch: int, size: int) -> jax.Array:
  return jnp.asarray(np.random.default_rng(seed).uniform(size=(batch, size, size, 3)), jnp.float32)


def train_images(seed: int, batch: int, size: int) -> jax.Array:
  """Blotchy images with a little noise: content and style Grams then differ well above rounding
  (two plain-noise images have nearly equal Grams), and the noise avoids max-pool ties."""
  rng = np.random.default_rng(seed)
  cell = max(1, size // 8)
  coarse = rng.uniform(size=(batch, size // cell, size // cell, 3))
  img = 0.8 * np.repeat(np.repeat(coarse, cell, axis=1), cell, axis=2)
  return jnp.asarray(img + 0.2 * rng.uniform(size=img.shape), jnp.float32)


def _own_buffers(tree):
  # One buffer per leaf: an init may put the same array in two places (TSPR starts its main decoder
  # as the auxiliary one), and a donated state cannot hold a buffer twice.
  return jax.tree.map(lambda a: a.copy() if isinstance(a, jax.Array) else a, tree)


def _init(trainer, batch_dict):
  """`trainer.init` as one compiled program: run op by op, every primitive compiles on its own,
  which costs seconds per case on a CPU. Its closed-over arrays (loss-net weights, style images)
  are passed in as arguments, as the training loop does: baked in, XLA would constant-fold their
  VGG passes (seconds to minutes). Eager for an init that needs concrete values."""
  key = jax.random.key(0)
  try:
    treedef = jax.tree_util.tree_structure(jax.eval_shape(trainer.init, key, batch_dict))
    return jax.tree_util.tree_unflatten(treedef, loop.init_leaves(trainer.init, key, batch_dict))
  except (jax.errors.JAXTypeError, jax.errors.JAXIndexError):
    return trainer.init(jax.random.key(0), batch_dict)


def adam_first_grad(opt_state, b1: float = 0.9):
  """The first step's gradient tree, from Adam's first moment (mu = (1 - b1) g from zero).

  A dict of optimiser states (one optimiser per parameter group, as StyleBank's) gives the dict
  of the groups' gradient trees, which flattens in the parameters' order.
  """
  if isinstance(opt_state, dict):
    return {k: adam_first_grad(v, b1) for k, v in opt_state.items()}
  for leaf in jax.tree_util.tree_leaves(opt_state, is_leaf=lambda s: hasattr(s, "mu")):
    if hasattr(leaf, "mu"):
      return jax.tree.map(lambda m: np.asarray(m, np.float64) / (1.0 - b1), leaf.mu)
  raise ValueError("no Adam state found")


def flat(tree) -> np.ndarray:
  """All leaves of `tree` (in `tree_leaves` order) as one float64 vector."""
  leaves = jax.tree_util.tree_leaves(tree)
  return np.concatenate([np.asarray(a, np.float64).ravel() for a in leaves])


def train_reference(outputs, b1: float = 0.9) -> dict:
  """What a train twin must reproduce, from one JAX `train_step` output `(state, metrics)`
  (`b1`: Adam's first-moment decay, to read the gradient back)."""
  state, metrics = outputs
  return {"loss": float(metrics["loss"]), "grads": flat(adam_first_grad(state.opt_state, b1)),
          "params": flat(state.params)}


def train_case(method, trainer, batch_dict, batch, note="", twin: Optional[Callable] = None,
               b1: float = 0.9):
  """A train-step case; `twin(trainer, state0, batch, rng)` builds its PyTorch twin."""
  state = _own_buffers(_init(trainer, batch_dict))
  rng = jax.random.key(1)
  kw = {}
  if twin is not None:
    # The starting state of the check call and of the twin: copied on first use, which the runner
    # makes before any timed call donates `state` (and never when no twin is timed).
    start = functools.lru_cache(maxsize=1)(lambda: _own_buffers(state))
    kw = dict(reference=functools.partial(train_reference, b1=b1),
              fresh_args=lambda: (_own_buffers(start()), batch_dict, rng),
              torch=lambda: twin(trainer, start(), batch_dict, rng))
  return Case(method, "train", "", trainer.train_step, (state, batch_dict, rng), batch,
              donate_argnums=(0,), carry=True, note=note, **kw)


def train_twin(name: str, module: str = "torch_train", keyed: bool = False):
  """`jaxstyle.benchmark.<module>.<name>`, imported only when the twin is built (torch is
  optional). `keyed`: the twin also takes the step's PRNG key (to reproduce its random draws)."""
  def build(trainer, state, batch, rng):
    twin = getattr(importlib.import_module(f"jaxstyle.benchmark.{module}"), name)
    return twin(trainer, state, batch, rng) if keyed else twin(trainer, state, batch)
  return build


def _inference_twin(name: str, *args):
  def build():
    from jaxstyle.benchmark import torch_cases  # pylint: disable=g-import-not-at-top
    return getattr(torch_cases, name)(*args)
  return build


# --------------------------------------------------------------------------------------------------
# One builder per method: `(size, batch, dtype, kinds, width) -> [Case]`; dtype None = float32.


def johnson_cases(size, batch, dtype, kinds, width=1.0) -> List[Case]:
  from jaxstyle.methods import johnson  # pylint: disable=g-import-not-at-top
  config = johnson.JohnsonConfig(width=width)
  model = johnson.TransformerNet(config, dtype=dtype)
  x = _images(0, batch, size)
  out = []
  if "inference" in kinds:
    params = jax.jit(johnson.TransformerNet(config).init)(jax.random.key(0), x[:1])["params"]

    def infer(params, x):
      return model.apply({"params": params}, x)

    out.append(Case("johnson", "inference", "", infer, (params, x), batch,
                    reference=lambda y: y, fresh_args=lambda: (params, x),
                    torch=_inference_twin("johnson_twin", config, params, x, dtype),
                    compiler_options=xla_options.SMALL_DOTS))
  if "train" in kinds:
    style = np.asarray(train_images(2, 1, size)[0])
    trainer = johnson.JohnsonTrainer(config, random_vgg16(width), style, dtype=dtype)
    out.append(train_case("johnson", trainer, {"content": train_images(0, batch, size)}, batch,
                          twin=None if dtype else train_twin("johnson_train_twin")))
  return out


def msgnet_cases(size, batch, dtype, kinds, width=1.0) -> List[Case]:
  from jaxstyle.methods import msgnet  # pylint: disable=g-import-not-at-top
  config = msgnet.MSGNetConfig(ngf=scaled(128, width), stem_features=scaled(64, width, 4))
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

    out.append(Case("msgnet", "inference", "", infer, (params, x, gram), batch,
                    reference=lambda y: y, fresh_args=lambda: (params, x, gram),
                    torch=_inference_twin("msgnet_twin", config, params, x, gram, dtype),
                    note="style Gram precomputed (a fixed style), as in a video stream"))
  if "train" in kinds:
    trainer = msgnet.MSGNetTrainer(config, random_vgg16(width), dtype=dtype)
    b = {"content": train_images(0, batch, size), "style": train_images(2, 1, size)}
    out.append(train_case("msgnet", trainer, b, batch, note=f"style image {size} px",
                          twin=None if dtype else train_twin("msgnet_train_twin")))
  return out


def adain_cases(size, batch, dtype, kinds, width=1.0) -> List[Case]:
  from jaxstyle.methods import adain  # pylint: disable=g-import-not-at-top
  from jaxstyle.methods.adain import model as adain_model  # pylint: disable=g-import-not-at-top
  from jaxstyle.nn import adaptive  # pylint: disable=g-import-not-at-top
  config = adain.AdaINConfig(width=width)
  encoder = adain_model.encoder_net(random_vgg16(width), config)
  decoder = adain_model.make_decoder(config, encoder.depth, dtype=dtype)
  x, style = _images(0, batch, size), _images(2, batch, size)
  out = []
  if "inference" in kinds:
    t0 = jnp.zeros((1, size // 8, size // 8, encoder.widths[3]), jnp.float32)
    params = jax.jit(adain_model.make_decoder(config, encoder.depth).init)(
        jax.random.key(0), t0)["params"]
    layer = adain_model.ENCODER_LAYER

    def infer(params, encoder, x, style):
      f_c = adain_model.encode(encoder, x, (layer,), dtype)[layer]
      f_s = adain_model.encode(encoder, style, (layer,), dtype)[layer]
      return decoder.apply({"params": params}, adaptive.adain(f_c, f_s, config.eps))

    out.append(Case("adain", "inference", "", infer, (params, encoder, x, style), batch,
                    reference=lambda y: y, fresh_args=lambda: (params, encoder, x, style),
                    torch=_inference_twin("adain_twin", config, encoder, params, x, style, dtype),
                    note="encodes content and style per image",
                    compiler_options=xla_options.SMALL_DOTS))
  if "train" in kinds:
    trainer = adain.AdaINTrainer(config, random_vgg16(width), dtype=dtype)
    b = {"content": train_images(0, batch, size), "style": train_images(2, batch, size)}
    out.append(train_case("adain", trainer, b, batch,
                          twin=None if dtype else train_twin("adain_train_twin")))
  return out


def stylebank_cases(size, batch, dtype, kinds, width=1.0) -> List[Case]:
  from jaxstyle.methods import stylebank  # pylint: disable=g-import-not-at-top
  config = stylebank.StyleBankConfig(width=width)
  net = stylebank.StyleBankNet(config, dtype)
  x = _images(0, batch, size)
  ids = jnp.zeros((batch,), jnp.int32)
  out = []
  if "inference" in kinds:
    params = jax.jit(stylebank.StyleBankNet(config).init, static_argnums=2)(
        jax.random.key(0), x[:1], 1)
    out.append(Case("stylebank", "inference", "", net, (params, x, ids), batch,
                    reference=lambda y: y, fresh_args=lambda: (params, x, ids),
                    torch=_inference_twin("stylebank_twin", config, params, x, ids, dtype),
                    note="E -> bank of each image's style -> D"))
  if "train" in kinds:
    styles = [np.asarray(train_images(2, 1, size)[0])]
    trainer = stylebank.StyleBankTrainer(config, random_vgg16(width), styles, dtype=dtype)
    out.append(train_case("stylebank", trainer, {"content": x, "style_id": ids}, batch,
                          note="T=2 schedule: stylize or auto-encoder step (a select on CPU, "
                          "lax.cond elsewhere; stylebank.trainer.train_step)",
                          twin=None if dtype else train_twin("stylebank_train_twin")))
  return out


def magenta_cases(size, batch, dtype, kinds, width=1.0) -> List[Case]:
  from jaxstyle.methods import magenta  # pylint: disable=g-import-not-at-top
  from jaxstyle.methods.magenta import model as magenta_model  # pylint: disable=g-import-not-at-top
  from jaxstyle.methods.magenta import trainer as magenta_trainer  # pylint: disable=g-import-not-at-top
  config = magenta.MagentaConfig(width=width)
  loss_net = magenta_trainer.loss_net_for(random_vgg16(width), config)
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
                    reference=lambda y: y, fresh_args=lambda: (params, loss_net, x, style),
                    torch=_inference_twin("magenta_twin", config, loss_net, params, x, style,
                                          dtype),
                    note="style prediction (VGG) + transformer per image; the CPU options "
                    "of the library's transformer program apply to the whole case",
                    compiler_options=xla_options.SMALL_DOTS))
  if "train" in kinds:
    trainer = magenta.MagentaTrainer(config, random_vgg16(width), dtype=dtype)
    out.append(train_case("magenta", trainer, {"content": x, "style": style}, batch,
                          twin=None if dtype else train_twin("magenta_train_twin")))
  return out


def tspr_cases(size, batch, dtype, kinds, width=1.0) -> List[Case]:
  from jaxstyle.methods import tspr  # pylint: disable=g-import-not-at-top
  from jaxstyle.methods.tspr import trainer as tspr_trainer  # pylint: disable=g-import-not-at-top
  config = tspr.TSPRConfig(ngf=scaled(64, width), ndf=scaled(64, width))
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

    def twin():
      from jaxstyle.benchmark import torch_tspr  # pylint: disable=g-import-not-at-top
      return torch_tspr.tspr_twin(config, variables, x, style, dtype)

    out.append(Case("tspr", "inference", "", infer, (variables, x, style), batch,
                    reference=lambda y: y, fresh_args=lambda: (variables, x, style), torch=twin,
                    note="zero-shot: one peer (style) image per content image, both "
                    "recombination stages (kNN + graph attention, eval mode)"))
  if "train" in kinds:
    trainer = tspr.TSPRTrainer(config, global_batch=batch, image_size=size, dtype=dtype)
    b = {"content": x, "content_peer": x[::-1], "style": style, "style_peer": style[::-1],
         "label": jnp.zeros((batch,), jnp.int32)}
    out.append(train_case("tspr", trainer, b, batch, note="all three phases (auxiliary, main, "
                          "discriminator) on a one-device mesh",
                          twin=None if dtype else train_twin("tspr_train_twin",
                                                             "torch_tspr_train", keyed=True),
                          b1=config.beta1))
  return out


BUILDERS: Dict[str, Callable[..., List[Case]]] = {
    "johnson": johnson_cases, "msgnet": msgnet_cases, "stylebank": stylebank_cases,
    "adain": adain_cases, "magenta": magenta_cases, "tspr": tspr_cases,
}

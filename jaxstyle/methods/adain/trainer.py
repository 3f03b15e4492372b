"""Training the AdaIN decoder with the shared loop.

The frozen VGG encoder rides in `TrainState.frozen` (an argument of the jitted step, never a
baked-in constant, never checkpointed); the per-layer loss scales (see
`AdaINConfig.normalize_layers`) live in `TrainState.extra`, so a resumed run keeps the scales it
started with.
"""
import dataclasses
import functools
from typing import Any, Dict, Optional

import jax
import jax.numpy as jnp
import optax

from jaxstyle import api
from jaxstyle import vgg
from jaxstyle.losses import basic as basic_losses
from jaxstyle.losses import style as style_losses
from jaxstyle.data import pairs
from jaxstyle.methods.adain.model import AdaINConfig
from jaxstyle.methods.adain.model import Decoder
from jaxstyle.methods.adain.model import ENCODER_LAYER
from jaxstyle.methods.adain.model import encode
from jaxstyle.methods.adain.model import encoder_net
from jaxstyle.methods.adain.model import make_decoder
from jaxstyle.nn import adaptive
from jaxstyle.train.state import TrainState

METHOD = "adain"


def _loss_layers(config: AdaINConfig):
  return tuple(dict.fromkeys(tuple(config.style_layers) + (ENCODER_LAYER,)))


def layer_scales(encoder: vgg.LossNet, images: jax.Array, layers) -> Dict[str, jax.Array]:
  """Mean activation of each layer over `images` `[B, H, W, 3]` (the normalised VGG has ~1)."""
  feats = encode(encoder, images, layers)
  return {k: jnp.maximum(jnp.mean(v), 1e-6) for k, v in feats.items()}


# --------------------------------------------------------------------------------------------------
# The pure step


def loss_fn(params, frozen, extra, content, style, *, decoder: Decoder, config: AdaINConfig,
            dtype=None):
  """AdaIN training loss (paper eq. 11-13): content at relu4_1 vs t, mean/std style loss.

  Args:
    params: decoder parameters.
    frozen: {'encoder': LossNet}.
    extra: {'layer_scale': {layer: scalar}}.
    content: `[B, H, W, 3]` content crops in [0, 1].
    style: `[B, H, W, 3]` style crops in [0, 1], paired with `content`.
    decoder: the Decoder module.
    config: AdaINConfig.
    dtype: VGG compute dtype.

  Returns:
    (loss, (parts, stylized)).
  """
  encoder = frozen["encoder"]
  layers = _loss_layers(config)
  f_c = encode(encoder, content, (ENCODER_LAYER,), dtype)[ENCODER_LAYER]
  f_s = encode(encoder, style, layers, dtype)
  t = adaptive.adain(f_c, f_s[ENCODER_LAYER], config.eps)
  stylized = decoder.apply({"params": params}, t)
  f_g = encode(encoder, stylized, layers, dtype)

  scale = extra["layer_scale"]
  content_loss = basic_losses.content_loss(f_g[ENCODER_LAYER], t) / scale[ENCODER_LAYER] ** 2
  style_loss = 0.0
  for layer, weight in zip(config.style_layers, config.style_layer_weights):
    layer_loss = style_losses.mean_std_loss(f_g[layer], f_s[layer], eps=config.eps)
    style_loss += weight * layer_loss / scale[layer] ** 2
  loss = config.content_weight * content_loss + config.style_weight * style_loss
  return loss, ({"content_loss": content_loss, "style_loss": style_loss}, stylized)


def train_step(state: TrainState, batch: Dict[str, jax.Array], rng: jax.Array, *,
               decoder: Decoder, config: AdaINConfig, dtype=None):
  """One Adam step of the decoder; returns (state, metrics)."""
  del rng  # deterministic given the batch
  grad_fn = jax.value_and_grad(
      functools.partial(loss_fn, decoder=decoder, config=config, dtype=dtype), has_aux=True)
  (loss, (parts, _)), grads = grad_fn(state.params, state.frozen, state.extra, batch["content"],
                                      batch["style"])
  state = state.apply_gradients(grads)
  return state, {"loss": loss, **parts}


def inverse_time_decay(learning_rate: float, decay: float):
  """lr / (1 + decay * step): the reference's `adjust_learning_rate`."""
  return lambda step: learning_rate / (1.0 + decay * step)


# --------------------------------------------------------------------------------------------------
# Trainer


class AdaINTrainer:
  """The `jaxstyle.train.api.Trainer` of the AdaIN decoder.

  Args:
    config: AdaINConfig.
    loss_net: the VGG (any of `vgg.load_loss_net`'s weights) used as encoder and loss network.
    learning_rate: Adam learning rate (default `config.learning_rate`).
    dtype: compute dtype (bf16 under --mixed_precision; parameters stay float32).
    weights: the loss net's name or path, recorded so inference loads the same encoder.
  """

  def __init__(self, config: AdaINConfig, loss_net: vgg.LossNet, *,
               learning_rate: Optional[float] = None, dtype=jnp.float32,
               weights: str = "hed-vgg16"):
    self.config = config.validate(loss_net.depth)
    self.encoder = encoder_net(loss_net, config)
    self.learning_rate = learning_rate or config.learning_rate
    self.dtype = dtype
    self.weights = weights
    self.decoder = make_decoder(config, loss_net.depth, dtype=dtype)
    self.train_step = functools.partial(train_step, decoder=self.decoder, config=self.config,
                                        dtype=dtype)

  def init(self, rng: jax.Array, batch: Dict[str, Any]) -> TrainState:
    content = jnp.asarray(batch["content"], jnp.float32)
    style = jnp.asarray(batch["style"], jnp.float32)
    t = encode(self.encoder, content[:1])[ENCODER_LAYER]
    params = make_decoder(self.config, self.encoder.depth).init(rng, t)["params"]
    layers = _loss_layers(self.config)
    if self.config.normalize_layers:
      scales = layer_scales(self.encoder, jnp.concatenate([content, style]), layers)
    else:
      scales = {k: jnp.ones((), jnp.float32) for k in layers}
    tx = optax.adam(inverse_time_decay(self.learning_rate, self.config.lr_decay))
    return TrainState.create(params, tx, extra={"layer_scale": scales},
                             frozen={"encoder": self.encoder})

  def sample(self, state: TrainState, batch: Dict[str, Any]) -> jax.Array:
    f_c = encode(state.frozen["encoder"], batch["content"])[ENCODER_LAYER]
    f_s = encode(state.frozen["encoder"], batch["style"])[ENCODER_LAYER]
    out = self.decoder.apply({"params": state.params}, adaptive.adain(f_c, f_s, self.config.eps))
    return jnp.clip(out, 0.0, 1.0)

  def config_dict(self) -> Dict[str, Any]:
    return {"method": METHOD, "config": dataclasses.asdict(self.config), "weights": self.weights,
            "depth": self.encoder.depth}


def make_trainer(request: api.TrainRequest):
  """Builds (trainer, dataset) for `launch/train.py --method=adain`."""
  return pairs.make_pair_trainer(request, AdaINConfig, AdaINTrainer)

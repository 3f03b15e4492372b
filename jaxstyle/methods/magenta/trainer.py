"""Training the arbitrary-style network (predictor heads + transformer) with the shared loop.

The VGG loss network, which also feeds the style predictor, rides in `TrainState.frozen` (an
argument of the jitted step, never a baked-in constant, never checkpointed).
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
from jaxstyle.losses import perceptual
from jaxstyle.losses import style as style_losses
from jaxstyle.data import pairs
from jaxstyle.methods.magenta.model import ArbitraryStyleNet
from jaxstyle.methods.magenta.model import MagentaConfig
from jaxstyle.methods.magenta.model import pooled_features
from jaxstyle.train.state import TrainState

METHOD = "magenta"


def loss_net_for(loss_net: vgg.LossNet, config: MagentaConfig) -> vgg.LossNet:
  """The loss net with the configured pooling (the reference's TF-slim VGG16 averages)."""
  return loss_net.replace_options(pooling=config.loss_pooling)


def style_inputs(loss_net: vgg.LossNet, styles01: jax.Array, config: MagentaConfig, dtype=None):
  """One VGG pass over the style images: (predictor input `[B, D]`, {layer: Gram `[B, C, C]`})."""
  layers = tuple(dict.fromkeys(tuple(config.predictor_layers) + tuple(config.style_layers)))
  feats = loss_net.features(styles01, layers, dtype=dtype)
  feats = {k: v.astype(jnp.float32) for k, v in feats.items()}
  grams = {k: style_losses.gram_matrix(feats[k], "hw") for k in config.style_layers}
  return pooled_features(feats, config.predictor_layers), jax.lax.stop_gradient(grams)


# --------------------------------------------------------------------------------------------------
# The pure step


def loss_fn(params, frozen, content, style, *, net: ArbitraryStyleNet, config: MagentaConfig,
            dtype=None):
  """Magenta's total loss: content MSE + Gram style loss (H*W-normalised) + total variation.

  Returns:
    (loss, (parts, stylized)).
  """
  loss_net = frozen["loss_net"]
  pooled, grams = style_inputs(loss_net, style, config, dtype)
  stylized = net.apply({"params": params}, content, pooled)
  loss, parts = perceptual.perceptual_loss(
      loss_net, stylized, content, grams, config.content_layers, config.style_layers,
      config.content_weight, config.style_weight, tv_weight=0.0, normalize="hw", dtype=dtype)
  # Magenta's TV is tf.nn.l2_loss (half the sum of squares) per element of [0, 1] images.
  tv = config.tv_weight * 0.5 * basic_losses.total_variation(stylized, "l2", "mean")
  parts = {"content_loss": parts["content"], "style_loss": parts["style"], "tv_loss": tv}
  return loss + tv, (parts, stylized)


def train_step(state: TrainState, batch: Dict[str, jax.Array], rng: jax.Array, *,
               net: ArbitraryStyleNet, config: MagentaConfig, dtype=None):
  """One Adam step of the whole trained model; returns (state, metrics)."""
  del rng  # deterministic given the batch
  grad_fn = jax.value_and_grad(functools.partial(loss_fn, net=net, config=config, dtype=dtype),
                               has_aux=True)
  (loss, (parts, _)), grads = grad_fn(state.params, state.frozen, batch["content"],
                                      batch["style"])
  state = state.apply_gradients(grads)
  return state, {"loss": loss, **parts}


# --------------------------------------------------------------------------------------------------
# Trainer


class MagentaTrainer:
  """The `jaxstyle.train.api.Trainer` of the arbitrary-style network.

  Args:
    config: MagentaConfig.
    loss_net: the VGG loss network (also the style predictor's feature extractor).
    learning_rate: Adam learning rate (default `config.learning_rate`).
    dtype: compute dtype (bf16 under --mixed_precision; parameters stay float32).
    weights: the loss net's name or path, recorded so inference loads the same features.
  """

  def __init__(self, config: MagentaConfig, loss_net: vgg.LossNet, *,
               learning_rate: Optional[float] = None, dtype=jnp.float32,
               weights: str = "hed-vgg16"):
    self.config = config.validate(loss_net.depth)
    self.loss_net = loss_net_for(loss_net, config)
    self.learning_rate = learning_rate or config.learning_rate
    self.dtype = dtype
    self.weights = weights
    self.net = ArbitraryStyleNet(self.config, dtype=dtype)
    self.train_step = functools.partial(train_step, net=self.net, config=self.config,
                                        dtype=dtype)

  def init(self, rng: jax.Array, batch: Dict[str, Any]) -> TrainState:
    content = jnp.asarray(batch["content"][:1], jnp.float32)
    pooled, _ = style_inputs(self.loss_net, jnp.asarray(batch["style"][:1], jnp.float32),
                             self.config)
    params = ArbitraryStyleNet(self.config).init(rng, content, pooled)["params"]
    return TrainState.create(params, optax.adam(self.learning_rate),
                             frozen={"loss_net": self.loss_net})

  def sample(self, state: TrainState, batch: Dict[str, Any]) -> jax.Array:
    pooled, _ = style_inputs(state.frozen["loss_net"], batch["style"], self.config)
    return jnp.clip(self.net.apply({"params": state.params}, batch["content"], pooled), 0.0, 1.0)

  def config_dict(self) -> Dict[str, Any]:
    return {"method": METHOD, "config": dataclasses.asdict(self.config), "weights": self.weights,
            "depth": self.loss_net.depth}


def make_trainer(request: api.TrainRequest):
  """Builds (trainer, dataset) for `launch/train.py --method=magenta`."""
  return pairs.make_pair_trainer(request, MagentaConfig, MagentaTrainer)

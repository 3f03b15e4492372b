"""Training a Johnson et al. network for one style with the shared loop.

The loss network and the style Grams ride in `TrainState.frozen` (arguments of the jitted step,
never baked-in constants, never checkpointed); the trainer rebuilds them in `init`, also on resume.
"""
import dataclasses
import functools
import os
from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxstyle import api
from jaxstyle import data
from jaxstyle import image
from jaxstyle import vgg
from jaxstyle.errors import ConfigError
from jaxstyle.losses import perceptual
from jaxstyle.methods.johnson.model import JohnsonConfig
from jaxstyle.methods.johnson.model import TransformerNet
from jaxstyle.train import precision
from jaxstyle.train.state import TrainState

METHOD = "johnson"


# --------------------------------------------------------------------------------------------------
# The pure step


def _loss_fn(params, frozen, content, *, model: TransformerNet, config: JohnsonConfig):
  """Perceptual loss of the stylized batch; returns (loss, (parts, output))."""
  output = model.apply({"params": params}, content)
  loss, parts = perceptual.perceptual_loss(
      frozen["loss_net"], output, content, frozen["style_grams"],
      content_layers=config.content_layers, style_layers=config.style_layers,
      content_weight=config.content_weight, style_weight=config.style_weight,
      tv_weight=config.tv_weight, layer_weights=config.style_layer_weights or None,
      normalize=config.gram_normalize, dtype=_vgg_dtype(model.dtype),
      style_scales=frozen["style_scales"] if config.normalize_layers else None,
      normalize_content=config.normalize_layers)
  return loss, parts


def _vgg_dtype(dtype):
  """bf16 loss-network compute under mixed precision (statistics stay f32), else the default."""
  return None if dtype in (None, jnp.float32) else dtype


def train_step(state: TrainState, batch: Dict[str, jax.Array], rng: jax.Array, *,
               model: TransformerNet, config: JohnsonConfig):
  """One Adam step on the perceptual loss (Johnson et al. Eq. 5 without the pixel term)."""
  del rng  # The step is deterministic.
  grad_fn = jax.value_and_grad(functools.partial(_loss_fn, model=model, config=config),
                               has_aux=True)
  (loss, parts), grads = grad_fn(state.params, state.frozen, batch["content"])
  state = state.apply_gradients(grads)
  metrics = {"loss": loss, **{k: v for k, v in parts.items() if k != "loss"}}
  return state, metrics


# --------------------------------------------------------------------------------------------------
# Trainer


class JohnsonTrainer:
  """The `jaxstyle.train.api.Trainer` of a one-style Johnson network.

  Args:
    config: JohnsonConfig.
    loss_net: jaxstyle.vgg.LossNet.
    style01: [h, w, 3] style image in [0, 1].
    learning_rate: Adam learning rate.
    dtype: model computation dtype (bf16 under --mixed_precision).
    style_path: where the style came from (recorded in the config for the record).
  """

  def __init__(self, config: JohnsonConfig, loss_net, style01: np.ndarray, *,
               learning_rate: Optional[float] = None, dtype=jnp.float32,
               style_path: Optional[str] = None):
    vgg.check_layers(tuple(config.content_layers) + tuple(config.style_layers), loss_net.depth)
    if config.output not in ("tanh", "linear"):
      raise ConfigError(f"output must be tanh or linear, got {config.output!r}")
    self.config = config
    self.loss_net = loss_net
    self.style01 = np.asarray(style01, np.float32)
    self.learning_rate = learning_rate or config.learning_rate
    self.model = TransformerNet(config, dtype=dtype)
    self.style_path = style_path
    self.train_step = functools.partial(train_step, model=self.model, config=config)

  def init(self, rng: jax.Array, batch: Dict[str, Any]) -> TrainState:
    content = jnp.asarray(batch["content"][:1])
    params = TransformerNet(self.config).init(rng, content)["params"]
    grams = perceptual.style_targets(self.loss_net, jnp.asarray(self.style01)[None],
                                     self.config.style_layers, self.config.gram_normalize)
    frozen = {"loss_net": self.loss_net, "style_grams": grams,
              "style_scales": perceptual.style_scales(grams)}
    return TrainState.create(params, optax.adam(self.learning_rate), frozen=frozen)

  def sample(self, state: TrainState, batch: Dict[str, Any]) -> jax.Array:
    return jnp.clip(self.model.apply({"params": state.params}, batch["content"]), 0.0, 1.0)

  def config_dict(self) -> Dict[str, Any]:
    # The loop saves this as config.json["config"], next to "method".
    return {"model": dataclasses.asdict(self.config), "style_path": self.style_path}


# --------------------------------------------------------------------------------------------------
# Data


class ContentDataset:
  """Content batches `{'content': [B, S, S, 3]}`, a pure function of (seed, step)."""

  def __init__(self, content_dir: Optional[str], image_size: int, seed: int):
    self.source = data.image_source(content_dir, image_size, seed=seed)

  @property
  def num_skipped(self) -> int:
    return getattr(self.source, "num_skipped", 0)

  def close(self):
    close = getattr(self.source, "close", None)
    if close:
      close()

  def batch(self, step: int, batch_size: int) -> Dict[str, np.ndarray]:
    b = self.source.batch(step, batch_size)
    return {"content": b["image"] if "image" in b else b["content"]}


def list_images(folder: str) -> list:
  """Image files under `folder` (recursive, sorted); ConfigError if there are none."""
  found = data.find_images(folder)
  if not found:
    raise ConfigError(f"no images found in style folder {folder}")
  return found


def load_style(config: JohnsonConfig, style_dir: Optional[str]) -> Tuple[np.ndarray, str]:
  """The style image: `style_image` if set, else the first image of `style_dir`, else a sample."""
  if config.style_image:
    if not os.path.isfile(config.style_image):
      raise ConfigError(f"style_image {config.style_image} is not a file")
    path = config.style_image
  elif style_dir is not None:
    path = list_images(style_dir)[0]
  else:
    return image.resize_long_side(image.sample_style(), config.style_size), "<sample>"
  return image.load_image(path, config.style_size), path


def make_trainer(request: api.TrainRequest):
  """Builds (trainer, dataset) for `launch/train.py --method=johnson`."""
  config = api.apply_overrides(JohnsonConfig(), request.overrides)
  if config.width <= 0 or config.num_residual < 0 or config.style_size <= 0:
    raise ConfigError("width and style_size must be positive and num_residual >= 0")
  config = api.with_style_layer_weights(config)
  style01, style_path = load_style(config, request.style_dir)
  loss_net = vgg.load_loss_net(request.weights)
  trainer = JohnsonTrainer(config, loss_net, style01, learning_rate=request.learning_rate,
                           dtype=precision.compute_dtype(request), style_path=style_path)
  return trainer, ContentDataset(request.content_dir, request.image_size, request.seed)

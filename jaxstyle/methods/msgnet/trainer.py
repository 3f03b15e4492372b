"""Training MSG-Net on many styles at once with the shared loop.

Per step (reference `experiments/main.py` `train`): the style image goes through the Siamese
encoder to set the CoMatch target G (gradients flow into the encoder through G as well), the content
batch is stylized, and the perceptual loss compares the output with the content (relu2_2) and with
the style's VGG Grams. The loss network rides in `TrainState.frozen` (an argument of the jitted
step, never a baked-in constant, never checkpointed); `init` rebuilds it on resume.
"""
import dataclasses
import functools
from typing import Any, Dict, Optional, Sequence

import jax
import jax.numpy as jnp
import optax

from jaxstyle import api
from jaxstyle import vgg
from jaxstyle.errors import ConfigError
from jaxstyle.losses import perceptual
from jaxstyle.methods.msgnet import data as msg_data
from jaxstyle.methods.msgnet.model import MSGNet, MSGNetConfig
from jaxstyle.train import precision
from jaxstyle.train.state import TrainState

METHOD = "msgnet"


# --------------------------------------------------------------------------------------------------
# The pure step


def _loss_fn(params, loss_net, content, style, style_grams, *, model: MSGNet,
             config: MSGNetConfig):
  """Perceptual loss of the batch stylized towards `style` [1, s, s, 3]; (loss, parts)."""
  gram = model.apply({"params": params}, style, method=MSGNet.style_gram)
  output = model.apply({"params": params}, content, gram)
  return perceptual.perceptual_loss(
      loss_net, output, content, style_grams,
      content_layers=config.content_layers, style_layers=config.style_layers,
      content_weight=config.content_weight, style_weight=config.style_weight,
      tv_weight=config.tv_weight, normalize=config.gram_normalize,
      dtype=None if model.dtype in (None, jnp.float32) else model.dtype,
      style_scales=perceptual.style_scales(style_grams) if config.normalize_layers else None,
      normalize_content=config.normalize_layers)


def train_step(state: TrainState, batch: Dict[str, jax.Array], rng: jax.Array, *,
               model: MSGNet, config: MSGNetConfig):
  """One Adam step on the content + style loss for this step's style."""
  del rng  # The step is deterministic; the data pipeline draws the style and its size.
  loss_net = state.frozen["loss_net"]
  style = batch["style"][:1]  # every row is the same style (see MultiStyleDataset)
  style_grams = perceptual.style_targets(loss_net, style, config.style_layers,
                                         config.gram_normalize)
  grad_fn = jax.value_and_grad(functools.partial(_loss_fn, model=model, config=config),
                               has_aux=True)
  (loss, parts), grads = grad_fn(state.params, loss_net, batch["content"], style, style_grams)
  state = state.apply_gradients(grads)
  metrics = {"loss": loss, **{k: v for k, v in parts.items() if k != "loss"}}
  return state, metrics


# --------------------------------------------------------------------------------------------------
# Trainer


class MSGNetTrainer:
  """The `jaxstyle.train.api.Trainer` of a multi-style MSG-Net.

  Args:
    config: MSGNetConfig.
    loss_net: jaxstyle.vgg.LossNet.
    learning_rate: Adam learning rate (None = config.learning_rate).
    dtype: model computation dtype (bf16 under --mixed_precision).
    style_paths: the training styles, recorded in the config so `--style_index` can find them.
  """

  def __init__(self, config: MSGNetConfig, loss_net, *, learning_rate: Optional[float] = None,
               dtype=jnp.float32, style_paths: Sequence[str] = ()):
    check_config(config)
    vgg.check_layers(tuple(config.content_layers) + tuple(config.style_layers), loss_net.depth)
    self.config = config
    self.loss_net = loss_net
    self.learning_rate = learning_rate or config.learning_rate
    self.model = MSGNet(config, dtype=dtype)
    self.style_paths = list(style_paths)
    self.train_step = functools.partial(train_step, model=self.model, config=config)

  def init(self, rng: jax.Array, batch: Dict[str, Any]) -> TrainState:
    content = jnp.asarray(batch["content"][:1])
    c = self.config.comatch_features
    params = MSGNet(self.config).init(rng, content, jnp.zeros((1, c, c)))["params"]
    return TrainState.create(params, optax.adam(self.learning_rate),
                             frozen={"loss_net": self.loss_net})

  def sample(self, state: TrainState, batch: Dict[str, Any]) -> jax.Array:
    gram = self.model.apply({"params": state.params}, batch["style"][:1],
                            method=MSGNet.style_gram)
    return jnp.clip(self.model.apply({"params": state.params}, batch["content"], gram), 0.0, 1.0)

  def config_dict(self) -> Dict[str, Any]:
    return {"model": dataclasses.asdict(self.config), "styles": self.style_paths}


def check_config(config: MSGNetConfig) -> None:
  """ConfigError for settings that cannot build a network."""
  if config.ngf < 1 or config.stem_features < 4 or config.n_blocks < 0:
    raise ConfigError(f"msgnet needs ngf >= 1, stem_features >= 4 and n_blocks >= 0, got "
                      f"{config.ngf}, {config.stem_features}, {config.n_blocks}")
  if not config.style_sizes or min(config.style_sizes) < 4:
    raise ConfigError(f"style_sizes must be sizes of at least 4 px, got {config.style_sizes}")
  if config.pixel_scale <= 0:
    raise ConfigError(f"pixel_scale must be positive, got {config.pixel_scale}")


# --------------------------------------------------------------------------------------------------
# Launcher entry point


def make_trainer(request: api.TrainRequest):
  """Builds (trainer, dataset) for `launch/train.py --method=msgnet`."""
  config = api.apply_overrides(MSGNetConfig(), request.overrides)
  check_config(config)
  styles, paths = msg_data.load_styles(request.style_dir, max(config.style_sizes))
  loss_net = vgg.load_loss_net(request.weights)
  trainer = MSGNetTrainer(config, loss_net, learning_rate=request.learning_rate,
                          dtype=precision.compute_dtype(request), style_paths=paths)
  content = msg_data.ContentSource(request.content_dir, request.image_size, request.seed)
  dataset = msg_data.MultiStyleDataset(content, styles, config.style_sizes, request.seed)
  return trainer, dataset

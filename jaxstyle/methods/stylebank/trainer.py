"""StyleBank training: the (T+1)-step schedule and incremental learning, for the shared loop.

Params are `{'encoder', 'decoder', 'banks'}` with one Adam per part (`TrainState` dict
optimisers), so an auto-encoder step updates E and D and leaves the banks' Adam moments alone.
Incremental learning adds a `'new_banks'` part: the only one with a real optimiser, and the only one
the step updates, so the loaded encoder, decoder and old banks stay bitwise identical. The loss
network and the per-style Grams (stacked `[S, C, C]` per layer) ride in `TrainState.frozen`.
"""
import dataclasses
import functools
from typing import Any, Dict, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxstyle import vgg
from jaxstyle.losses import perceptual
from jaxstyle.methods.stylebank.model import StyleBankConfig
from jaxstyle.methods.stylebank.model import StyleBankNet
from jaxstyle.methods.stylebank.model import merge_new_banks
from jaxstyle.train.state import TrainState

METHOD = "stylebank"
_METRICS = ("content", "style", "tv", "identity")


def _metrics(loss, parts=None, identity=None, ae_step=False):
  """The same metric keys from both branches (`lax.cond` needs equal structures)."""
  zero = jnp.zeros((), jnp.float32)
  parts = parts or {}
  out = {k: jnp.asarray(parts.get(k, zero), jnp.float32) for k in ("content", "style", "tv")}
  out["identity"] = zero if identity is None else identity
  out["ae_step"] = jnp.asarray(float(ae_step), jnp.float32)
  out["loss"] = jnp.asarray(loss, jnp.float32)
  return out


def _perceptual(net: StyleBankNet, full_params, frozen, batch, bank_offset: int):
  """Stylizing-branch loss: each sample against the Grams of its own style."""
  output = net(full_params, batch["content"], batch["style_id"])
  return _perceptual_of(net, output, frozen, batch, bank_offset)


def _perceptual_of(net: StyleBankNet, output, frozen, batch, bank_offset: int):
  """The perceptual loss of stylized `output` for `batch` (content, per-sample style ids)."""
  style_id = batch["style_id"]
  grams = jax.tree_util.tree_map(lambda g: g[style_id - bank_offset], frozen["style_grams"])
  c = net.config
  scales = None
  if c.normalize_layers:
    scales = jax.tree_util.tree_map(lambda s: s[style_id - bank_offset], frozen["style_scales"])
  return perceptual.perceptual_loss(
      frozen["loss_net"], output, batch["content"], grams, content_layers=c.content_layers,
      style_layers=c.style_layers, content_weight=c.content_weight, style_weight=c.style_weight,
      tv_weight=c.tv_weight, layer_weights=c.style_layer_weights or None,
      normalize=c.gram_normalize, dtype=net.vgg_dtype, style_scales=scales,
      normalize_content=c.normalize_layers)


def stylize_step(state: TrainState, batch, *, net: StyleBankNet):
  """E -> K_i -> D on the perceptual loss; updates E, the used banks and D."""
  grad_fn = jax.value_and_grad(
      lambda p: _perceptual(net, p, state.frozen, batch, 0), has_aux=True)
  (loss, parts), grads = grad_fn(state.params)
  return state.apply_gradients(grads), _metrics(loss, parts)


def autoencoder_step(state: TrainState, batch, *, net: StyleBankNet):
  """E -> D on the identity loss ||D(E(I)) - I||^2; updates E and D only (paper Sec. 3.2)."""
  def loss_fn(ed):
    params = {**state.params, **ed}
    out = net(params, batch["content"])
    return net.config.identity_weight * jnp.mean(jnp.square(out - batch["content"]))
  ed = {"encoder": state.params["encoder"], "decoder": state.params["decoder"]}
  loss, grads = jax.value_and_grad(loss_fn)(ed)
  return state.apply_gradients(grads), _metrics(loss, identity=loss, ae_step=True)


def _is_autoencoder_step(state: TrainState, net: StyleBankNet) -> jax.Array:
  return (state.step % (net.config.stylize_steps + 1)) == net.config.stylize_steps


def cond_train_step(state: TrainState, batch, rng, *, net: StyleBankNet):
  """The (T+1)-step strategy in one jitted step: steps T, 2T+1, ... train the auto-encoder.

  `lax.cond` runs only the branch due. Used off CPU; see `merged_train_step` for why not on CPU.
  """
  del rng
  return jax.lax.cond(_is_autoencoder_step(state, net),
                      functools.partial(autoencoder_step, net=net),
                      functools.partial(stylize_step, net=net), state, batch)


def merged_train_step(state: TrainState, batch, rng, *, net: StyleBankNet):
  """The same schedule without control flow: one E -> (K_i or identity) -> D pass, both losses.

  XLA:CPU runs the branches of a `lax.cond` several times slower than the same code outside one
  (VGG16 loss, 128 px, batch 2: 3.0 s per step under cond vs 0.6 s for the bare stylizing step),
  so on CPU the step selects instead of branching: the bank output or the encoder features feed
  the decoder, the identity or perceptual loss is the objective (the other gets zero gradient),
  and on auto-encoder steps the banks and their Adam moments are kept as they were. The price is
  a perceptual-loss pass on the auto-encoder steps (1 in T+1), whose result is discarded.
  """
  del rng
  is_ae = _is_autoencoder_step(state, net)
  content, c = batch["content"], net.config

  def loss_fn(params):
    f = net.encode(params, content)
    out = net.decode(params, jnp.where(is_ae, f, net.apply_bank(params["banks"], f,
                                                                batch["style_id"])))
    identity = c.identity_weight * jnp.mean(jnp.square(out - content))
    perceptual_loss, parts = _perceptual_of(net, out, state.frozen, batch, 0)
    return jnp.where(is_ae, identity, perceptual_loss), (parts, identity)

  (loss, (parts, identity)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  new = state.apply_gradients(grads)
  keep = lambda old, updated: jax.tree_util.tree_map(
      lambda a, b: jnp.where(is_ae, a, b), old, updated)
  new = new.replace(
      params={**new.params, "banks": keep(state.params["banks"], new.params["banks"])},
      opt_state={**new.opt_state, "banks": keep(state.opt_state["banks"],
                                                new.opt_state["banks"])})
  zero = jnp.zeros((), jnp.float32)
  metrics = _metrics(loss, {k: jnp.where(is_ae, zero, v) for k, v in parts.items()},
                     identity=jnp.where(is_ae, identity, zero))
  metrics["ae_step"] = is_ae.astype(jnp.float32)
  return new, metrics


def train_step(state: TrainState, batch, rng, *, net: StyleBankNet):
  """`merged_train_step` on CPU, `cond_train_step` elsewhere (same updates, same metrics)."""
  step = merged_train_step if jax.default_backend() == "cpu" else cond_train_step
  return step(state, batch, rng, net=net)


def incremental_step(state: TrainState, batch, rng, *, net: StyleBankNet, bank_offset: int):
  """Trains only the new banks; E, D and the old banks are read, never updated."""
  del rng
  def loss_fn(new_banks):
    full = merge_new_banks({**state.params, "new_banks": new_banks})
    return _perceptual(net, full, state.frozen, batch, bank_offset)
  (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params["new_banks"])
  return state.apply_gradients({"new_banks": grads}), _metrics(loss, parts)


def _adam(config: StyleBankConfig, learning_rate: float):
  schedule = optax.exponential_decay(learning_rate, max(1, config.lr_decay_every), config.lr_decay,
                                     staircase=True)
  return optax.adam(schedule)


class StyleBankTrainer:
  """The `jaxstyle.train.api.Trainer` of StyleBank, fresh or incremental.

  Args:
    config: StyleBankConfig.
    loss_net: jaxstyle.vgg.LossNet.
    styles01: the styles to train, each [h, w, 3] in [0, 1] (sizes may differ).
    learning_rate: Adam learning rate (None: the config's).
    dtype: model computation dtype.
    style_paths: where the styles came from (recorded in config.json).
    base_params: incremental mode: the trained model to extend (its banks keep their indices; the
      new styles get the next ones).
    base_style_paths: the base model's recorded style paths.
  """

  def __init__(self, config: StyleBankConfig, loss_net, styles01: Sequence[np.ndarray], *,
               learning_rate: Optional[float] = None, dtype=jnp.float32,
               style_paths: Sequence[str] = (), base_params=None, base_style_paths=()):
    vgg.check_layers(tuple(config.content_layers) + tuple(config.style_layers), loss_net.depth)
    if config.stylize_steps < 1:
      raise ValueError("stylize_steps (T) must be >= 1")
    self.config = config
    self.loss_net = loss_net
    self.styles01 = [np.asarray(s, np.float32) for s in styles01]
    self.learning_rate = learning_rate or config.learning_rate
    self.net = StyleBankNet(config, dtype)
    self.base_params = None if base_params is None else merge_new_banks(base_params)
    self.bank_offset = 0 if base_params is None else StyleBankNet.num_styles(self.base_params)
    self.num_styles = self.bank_offset + len(self.styles01)
    self.style_paths = list(base_style_paths) + list(style_paths)
    if self.base_params is None:
      self.train_step = functools.partial(train_step, net=self.net)
    else:
      self.train_step = functools.partial(incremental_step, net=self.net,
                                          bank_offset=self.bank_offset)

  @property
  def incremental(self) -> bool:
    return self.base_params is not None

  def style_grams(self):
    """{layer: [S_new, C, C]}: each style's Grams (computed one by one: sizes differ)."""
    grams = [perceptual.style_targets(self.loss_net, jnp.asarray(s)[None], self.config.style_layers,
                                      self.config.gram_normalize) for s in self.styles01]
    return jax.tree_util.tree_map(lambda *g: jnp.concatenate(g, axis=0), *grams)

  def init(self, rng: jax.Array, batch: Dict[str, Any]) -> TrainState:
    content = jnp.asarray(batch["content"][:1])
    grams = self.style_grams()
    frozen = {"loss_net": self.loss_net, "style_grams": grams,
              "style_scales": perceptual.style_scales(grams)}
    if not self.incremental:
      params = StyleBankNet(self.config).init(rng, content, self.num_styles)
      tx = {k: _adam(self.config, self.learning_rate) for k in params}
      return TrainState.create(params, tx, frozen=frozen)
    base = jax.tree_util.tree_map(jnp.asarray, self.base_params)
    channels = base["encoder"]["conv3"]["conv"]["kernel"].shape[-1]
    new = self.net.init_banks(rng, channels, range(self.bank_offset, self.num_styles))
    params = {**base, "new_banks": new}
    tx = {k: optax.set_to_zero() for k in base}
    tx["new_banks"] = _adam(self.config, self.learning_rate)
    return TrainState.create(params, tx, frozen=frozen)

  def sample(self, state: TrainState, batch: Dict[str, Any]) -> jax.Array:
    params = merge_new_banks(state.params)
    return jnp.clip(self.net(params, batch["content"], batch["style_id"]), 0.0, 1.0)

  def config_dict(self) -> Dict[str, Any]:
    # The loop saves this as config.json["config"], next to "method".
    return {"model": dataclasses.asdict(self.config), "num_styles": self.num_styles,
            "style_paths": self.style_paths, "bank_offset": self.bank_offset}

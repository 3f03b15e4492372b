"""PyTorch twins of the Johnson, MSG-Net, AdaIN, StyleBank and Magenta train steps, for timing
(TSPR's three-phase step: `torch_tspr_train`).

One twin call is one optimiser step, as `trainer.train_step` is: forward through the trained
network, the method's loss through the frozen VGG twin (perceptual loss, or AdaIN's content +
mean/std loss), backward, and a `torch.optim.Adam` update (optax.adam's defaults: betas
0.9/0.999, eps 1e-8), with the same initial weights, batch and frozen targets as the JAX case.

Before timing, `check` runs one step of each side from the same start and compares
  * the loss, relative error;
  * the gradient (JAX's is read back from Adam's first moment, mu = (1 - b1) g after one step),
    max abs error / max |g| over all parameters;
  * the updated parameters, max abs error / learning rate, over the entries whose gradient is
    above 1e-3 max |g| and agrees between the two sides to 10%. Elsewhere Adam's first step is
    lr * sign(g) of rounding noise (e.g. the biases of convolutions followed by instance norm,
    whose true gradient is zero; with Johnson's raw layer weights at 128 px that noise exceeds
    1e-3 max |g|), which no two implementations agree on.
and reports the worst of the three against one tolerance.

The Flax tree <-> torch parameter correspondence is found by loading a tree of position indices
through the same `load` code (exact in float32 below 2**24 values), so no per-model name table is
needed and every trained parameter is checked to be covered exactly once. A frozen network inside
a twin (Magenta's VGG style predictor features) has `requires_grad=False` and is not trained.
"""
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple, Union

import jax
import numpy as np
import torch

from jaxstyle.benchmark import torch_models as tm
from jaxstyle.benchmark import torch_models_multistyle as tms
from jaxstyle.benchmark.case import TorchTwin

TOLERANCE = 1e-3
# MSG-Net's gradient is ill-conditioned in float32: two JAX computations of the same train step
# that differ only in their convolution algorithm (Winograd or direct, i.e. rounding) agree on the
# loss to the last digit but on the gradient only to 6.5e-4 max abs / max |g| (1.3e-3 relative L2)
# at 128 px, so PyTorch cannot be held closer than that either.
MSGNET_TOLERANCE = 5e-3
LossFn = Callable[[torch.nn.Module], torch.Tensor]
# torch 2.13 (CPU) aborted the whole process ("double free or corruption") inside the inductor-
# compiled backward of the StyleBank twin at 128 px, full width: a native crash no try can catch.
COMPILE_CRASH = ("torch.compile of the StyleBank train twin crashed the process (double free in "
                 "its compiled backward, torch 2.13 CPU): not run")
_INDEX_BITS = 23  # positions go through the twins' float32 tensors in digits of this many bits
_NOISE_FLOOR = 1e-3  # gradient entries below this x max |g| are rounding noise (see the docstring)


def _frozen_vgg(loss_net) -> tm.VGGFeatures:
  net = tm.VGGFeatures(loss_net.depth, loss_net.widths, loss_net.pooling, loss_net.padding,
                       loss_net.convention).load(loss_net.params)
  for p in net.parameters():
    p.requires_grad_(False)
  return net.eval()


def _t(a) -> torch.Tensor:
  return torch.from_numpy(np.array(a, np.float32))


# --------------------------------------------------------------------------------------------------
# Losses (jaxstyle.losses, NCHW)


def gram(f: torch.Tensor, normalize: Optional[str] = "chw") -> torch.Tensor:
  """jaxstyle.losses.gram_matrix for NCHW features: `[B, C, C]`."""
  b, c, h, w = f.shape
  x = f.reshape(b, c, h * w)
  g = torch.bmm(x, x.transpose(1, 2))
  if normalize in ("none", None):
    return g
  return g / (c * h * w) if normalize == "chw" else g / (h * w)


def perceptual_loss(net, output, content, grams: Mapping[str, torch.Tensor], *, content_layers,
                    style_layers, content_weight, style_weight, tv_weight,
                    layer_weights: Optional[Sequence[float]] = None, normalize="chw",
                    style_scales: Optional[Mapping[str, torch.Tensor]] = None,
                    normalize_content=False, tv_scale=255.0) -> torch.Tensor:
  """jaxstyle.losses.perceptual.perceptual_loss (content MSE, Gram MSE, sum-reduced l2 TV)."""
  content_layers, style_layers = tuple(content_layers), tuple(style_layers)
  weights = list(layer_weights) if layer_weights else [1.0] * len(style_layers)
  use_content = bool(content_layers) and content_weight != 0
  feats = net(output, tuple(dict.fromkeys(style_layers + (content_layers if use_content else ()))))
  loss = output.new_zeros(())
  if use_content:
    with torch.no_grad():
      targets = net(content, content_layers)
    for name in content_layers:
      term = (feats[name] - targets[name]).square().mean()
      if normalize_content:
        term = term / targets[name].square().mean().clamp(min=1e-12)
      loss = loss + content_weight * term
  for name, w in zip(style_layers, weights):
    err = (gram(feats[name], normalize) - grams[name]).square()
    if style_scales is None:
      term = err.mean()
    else:
      term = (err.mean(dim=(1, 2)) / style_scales[name].reshape(-1)).mean()
    loss = loss + style_weight * w * term
  if tv_weight:
    x = output * tv_scale
    tv = ((x[:, :, 1:] - x[:, :, :-1]).square().sum() + (x[..., 1:] - x[..., :-1]).square().sum())
    loss = loss + tv_weight * tv / x.shape[0]
  return loss


# --------------------------------------------------------------------------------------------------
# The generic twin


def trained(model: torch.nn.Module) -> List[torch.nn.Parameter]:
  """The parameters a twin's optimiser updates (frozen sub-networks have requires_grad=False)."""
  return [p for p in model.parameters() if p.requires_grad]


def param_index(build: Callable[[Any], torch.nn.Module], params) -> Tuple[List[np.ndarray], int]:
  """For each parameter of `build(params)`, its values' positions in `model_cases.flat(params)`."""
  leaves, treedef = jax.tree_util.tree_flatten(params)
  sizes = [int(np.size(a)) for a in leaves]
  total = int(sum(sizes))
  starts = np.cumsum([0] + sizes[:-1])
  positions = [np.arange(s, s + n).reshape(np.shape(a)) for s, n, a in zip(starts, sizes, leaves)]

  def loaded(digit):  # float32 holds integers below 2**24 exactly: load the positions in digits
    tree = treedef.unflatten([(p >> (_INDEX_BITS * digit)) % 2 ** _INDEX_BITS for p in positions])
    return [p.detach().numpy().astype(np.int64).ravel() for p in trained(build(tree))]

  index = loaded(0)
  for digit in range(1, (max(total - 1, 1).bit_length() - 1) // _INDEX_BITS + 1):
    index = [i + (d << (_INDEX_BITS * digit)) for i, d in zip(index, loaded(digit))]
  seen = np.sort(np.concatenate(index)) if index else np.zeros(0, np.int64)
  if seen.shape != (total,) or np.any(seen != np.arange(total)):
    raise ValueError("the torch twin does not load every Flax parameter exactly once")
  return index, total


def train_twin(build: Callable[[Any], torch.nn.Module], params0,
               loss_fn: Union[LossFn, Sequence[LossFn]], learning_rate: float,
               lr_factor: Optional[Callable[[int], float]] = None,
               tolerance: float = TOLERANCE, no_compile: Optional[str] = None) -> TorchTwin:
  """A one-Adam-step twin of a train step (CPU only).

  Args:
    build: `build(params_tree) -> torch module` with the trained parameters loaded from the tree.
    params0: the JAX initial parameters.
    loss_fn: `loss_fn(module) -> scalar loss` of the case's batch, or a cycle of them (step i
      uses `loss_fn[i % len]`, each compiled apart; StyleBank's T+1 schedule); the check runs the
      first.
    learning_rate: Adam's base learning rate.
    lr_factor: optional schedule `step -> factor` (optax schedules count from 0, as LambdaLR).
    tolerance: what the worst of the three errors is held to (see MSGNET_TOLERANCE).
    no_compile: why the torch.compile mode must not run (it is then reported, not timed).
  """
  tm.require_cpu("train-step")
  index, total = param_index(build, params0)

  cycle = list(loss_fn) if isinstance(loss_fn, (list, tuple)) else [loss_fn]

  def fresh():
    model = build(params0).train()
    opt = torch.optim.Adam(trained(model), lr=learning_rate)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor) if lr_factor else None
    return model, opt, sched

  def make_fn(compiled: bool):
    if compiled and no_compile:
      raise NotImplementedError(no_compile)
    model, opt, sched = fresh()
    fns = [torch.compile(f) if compiled else f for f in cycle]
    step = [0]

    def call():
      opt.zero_grad(set_to_none=True)
      loss = fns[step[0] % len(fns)](model)
      step[0] += 1
      loss.backward()
      opt.step()
      if sched is not None:
        sched.step()
      return loss.detach()
    return call

  def check(reference):
    model, opt, _ = fresh()
    loss = cycle[0](model)
    loss.backward()
    opt.step()
    return compare_step(model, loss, index, total, reference, learning_rate, tolerance)

  return TorchTwin(make_fn, check)


def compare_step(model, loss, index, total, reference, learning_rate, tolerance):
  """`(worst error, tolerance)` of a twin's first step (`loss`, `.grad`s and updated parameters of
  `model`, after `opt.step()`) against the JAX `reference` (`model_cases.train_reference`)."""
  grads, params = np.full(total, np.nan), np.full(total, np.nan)
  for idx, p in zip(index, trained(model)):
    # No gradient at all (e.g. a zero-size parameter) is a zero gradient.
    grads[idx] = 0.0 if p.grad is None else p.grad.detach().double().numpy().ravel()
    params[idx] = p.detach().double().numpy().ravel()
  g_ref = reference["grads"]
  g_max = max(float(np.max(np.abs(g_ref))), 1e-30)
  loss_err = abs(loss.item() - reference["loss"]) / max(abs(reference["loss"]), 1e-30)
  grad_err = float(np.max(np.abs(grads - g_ref))) / g_max
  # Adam's first step is lr * sign(g): compare it where the gradient is determined, i.e. above
  # the noise floor and where both sides agree on it to 10%.
  sure = (np.abs(g_ref) > _NOISE_FLOOR * g_max) & (np.abs(grads - g_ref) < 0.1 * np.abs(g_ref))
  param_err = float(np.max(np.abs(params - reference["params"])[sure], initial=0.0)) / learning_rate
  return max(loss_err, grad_err, param_err), tolerance


# --------------------------------------------------------------------------------------------------
# The trainers


def johnson_train_twin(trainer, state, batch) -> TorchTwin:
  """jaxstyle.methods.johnson.trainer.train_step: perceptual loss towards one style's Grams."""
  cfg = trainer.config
  net = _frozen_vgg(trainer.loss_net)
  content = tm.nchw(batch["content"])
  grams = {k: _t(v) for k, v in state.frozen["style_grams"].items()}
  scales = ({k: _t(v) for k, v in state.frozen["style_scales"].items()}
            if cfg.normalize_layers else None)

  def build(p):
    return tm.JohnsonNet(cfg.channels(), cfg.num_residual, cfg.pixel_scale,
                         getattr(cfg, "output", "linear"), getattr(cfg, "tanh_constant", 150.0)).load(p)

  def loss_fn(model):
    return perceptual_loss(
        net, model(content), content, grams, content_layers=cfg.content_layers,
        style_layers=cfg.style_layers, content_weight=cfg.content_weight,
        style_weight=cfg.style_weight, tv_weight=cfg.tv_weight,
        layer_weights=cfg.style_layer_weights or None, normalize=cfg.gram_normalize,
        style_scales=scales, normalize_content=cfg.normalize_layers)

  return train_twin(build, state.params, loss_fn, trainer.learning_rate)


def msgnet_train_twin(trainer, state, batch) -> TorchTwin:
  """jaxstyle.methods.msgnet.trainer.train_step: the style's Gram through the Siamese encoder
  (trained too), CoMatch, and the perceptual loss with per-layer normalisation."""
  cfg = trainer.config
  if cfg.norm_affine:
    raise NotImplementedError("the PyTorch MSG-Net twin has no affine instance norms")
  net = _frozen_vgg(state.frozen["loss_net"])
  content, style = tm.nchw(batch["content"]), tm.nchw(batch["style"][:1])

  def build(p):
    return tm.MSGNet(cfg.ngf, cfg.stem_features, cfg.n_blocks, cfg.pixel_scale,
                     cfg.output_offset).load(p)

  def loss_fn(model):
    with torch.no_grad():
      feats = net(style, tuple(cfg.style_layers))
      grams = {k: gram(feats[k], cfg.gram_normalize) for k in cfg.style_layers}
    scales = ({k: g.square().mean(dim=(1, 2)).clamp(min=1e-12) for k, g in grams.items()}
              if cfg.normalize_layers else None)
    output = model(content, tm.gram(model.encode(style)))
    return perceptual_loss(
        net, output, content, grams, content_layers=cfg.content_layers,
        style_layers=cfg.style_layers, content_weight=cfg.content_weight,
        style_weight=cfg.style_weight, tv_weight=cfg.tv_weight, normalize=cfg.gram_normalize,
        style_scales=scales, normalize_content=cfg.normalize_layers)

  return train_twin(build, state.params, loss_fn, trainer.learning_rate,
                    tolerance=MSGNET_TOLERANCE)


def adain_train_twin(trainer, state, batch) -> TorchTwin:
  """jaxstyle.methods.adain.trainer.train_step: decoder on AdaIN(f(c), f(s)), content loss at
  relu4_1 against t and mean/std style losses, each / its layer scale squared; lr / (1 + d step)."""
  cfg = trainer.config
  enc = trainer.encoder
  encoder = _frozen_vgg(enc)
  content, style = tm.nchw(batch["content"]), tm.nchw(batch["style"])
  layer = "relu4_1"
  layers = tuple(dict.fromkeys(tuple(cfg.style_layers) + (layer,)))
  scale = {k: float(v) for k, v in state.extra["layer_scale"].items()}

  def build(p):
    return tm.AdaINDecoder(cfg.channels(), enc.depth, enc.widths[3]).load(p)

  def loss_fn(decoder):
    with torch.no_grad():
      f_c = encoder(content, (layer,))[layer]
      f_s = encoder(style, layers)
      t = tm.adain(f_c, f_s[layer], cfg.eps)
    f_g = encoder(decoder(t), layers)
    loss = cfg.content_weight * (f_g[layer] - t).square().mean() / scale[layer] ** 2
    for name, w in zip(cfg.style_layers, cfg.style_layer_weights):
      (m_g, s_g), (m_s, s_s) = tm.mean_std(f_g[name], cfg.eps), tm.mean_std(f_s[name], cfg.eps)
      term = (m_g - m_s).square().mean() + (s_g - s_s).square().mean()
      loss = loss + cfg.style_weight * w * term / scale[name] ** 2
    return loss

  return train_twin(build, state.params, loss_fn, trainer.learning_rate,
                    lambda step: 1.0 / (1.0 + cfg.lr_decay * step))


def stylebank_train_twin(trainer, state, batch) -> TorchTwin:
  """jaxstyle.methods.stylebank.trainer.train_step: T stylizing steps (E -> K_id -> D, perceptual
  loss against each sample's style) then one auto-encoder step (E -> D, identity MSE)."""
  cfg = trainer.config
  if cfg.upsample != "nearest" or trainer.incremental:
    raise NotImplementedError("the PyTorch StyleBank twin trains fresh nearest-upsampling models")
  net = _frozen_vgg(state.frozen["loss_net"])
  content = tm.nchw(batch["content"])
  ids = np.asarray(batch["style_id"], np.int64)
  grams = {k: _t(np.asarray(v)[ids]) for k, v in state.frozen["style_grams"].items()}
  scales = ({k: _t(np.asarray(v)[ids]) for k, v in state.frozen["style_scales"].items()}
            if cfg.normalize_layers else None)
  ids = torch.from_numpy(ids)

  def build(p):
    return tms.StyleBankNet(cfg.channels(), len(p["banks"]), cfg.bank_layers, cfg.bank_kernel,
                            cfg.pixel_scale, cfg.output_offset).load(p)

  def stylize_loss(model):
    return perceptual_loss(
        net, model(content, ids), content, grams, content_layers=cfg.content_layers,
        style_layers=cfg.style_layers, content_weight=cfg.content_weight,
        style_weight=cfg.style_weight, tv_weight=cfg.tv_weight,
        layer_weights=cfg.style_layer_weights or None, normalize=cfg.gram_normalize,
        style_scales=scales, normalize_content=cfg.normalize_layers)

  def autoencoder_loss(model):
    out = model.decode(model.encode(content))
    return cfg.identity_weight * (out - content).square().mean()

  every = max(1, cfg.lr_decay_every)
  return train_twin(build, state.params, [stylize_loss] * cfg.stylize_steps + [autoencoder_loss],
                    trainer.learning_rate, lambda step: cfg.lr_decay ** (step // every),
                    no_compile=COMPILE_CRASH)


def magenta_train_twin(trainer, state, batch) -> TorchTwin:
  """jaxstyle.methods.magenta.trainer.loss_fn: one VGG pass over the styles feeds the predictor
  and the target Grams (H*W-normalised); content + style loss on the stylized batch + Magenta's TV
  (half the mean squared neighbour differences)."""
  cfg = trainer.config
  vgg = _frozen_vgg(state.frozen["loss_net"])
  content, style = tm.nchw(batch["content"]), tm.nchw(batch["style"])
  layers = tuple(dict.fromkeys(tuple(cfg.predictor_layers) + tuple(cfg.style_layers)))

  def build(p):
    return tms.MagentaNet(vgg, cfg.predictor_layers, cfg.channels(), cfg.num_residual,
                          cfg.bottleneck).load(p)

  def loss_fn(model):
    with torch.no_grad():
      feats = vgg(style, layers)
      grams = {k: gram(feats[k], "hw") for k in cfg.style_layers}
    out = model.transform(content, model.predictor(model.pool(feats)))
    loss = perceptual_loss(
        vgg, out, content, grams, content_layers=cfg.content_layers,
        style_layers=cfg.style_layers, content_weight=cfg.content_weight,
        style_weight=cfg.style_weight, tv_weight=0.0, normalize="hw")
    return loss + cfg.tv_weight * 0.5 * tm.total_variation_mean(out)

  return train_twin(build, state.params, loss_fn, trainer.learning_rate)

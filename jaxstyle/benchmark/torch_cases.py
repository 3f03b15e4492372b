"""PyTorch twins of the benchmark cases (see `torch_models`), built from the JAX cases' weights.

Each twin runs the same architecture on the same inputs; `check` compares it with the JAX output
before anything is timed, and the runner refuses to time a twin that disagrees.
"""
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import torch

from jaxstyle import optimize
from jaxstyle.benchmark import torch_models as tm
from jaxstyle.benchmark import torch_models_multistyle as tms
from jaxstyle.benchmark.case import TorchTwin, max_abs_err, tolerance


def _torch_dtype(dtype) -> torch.dtype:
  return torch.bfloat16 if dtype_name(dtype) == "bfloat16" else torch.float32


def dtype_name(dtype) -> str:
  return "float32" if dtype is None else jnp.dtype(dtype).name


def _inference_twin(module: torch.nn.Module, inputs: Sequence[torch.Tensor], dtype) -> TorchTwin:
  """Twin of a feed-forward case: `module(*inputs)` NCHW under no_grad vs the JAX NHWC output."""
  tdtype, device = _torch_dtype(dtype), tm.device()
  module = module.eval().to(device=device, dtype=tdtype)
  for p in module.parameters():
    p.requires_grad_(False)
  # Integer inputs (style ids) stay integers.
  inputs = [i.to(device=device, dtype=tdtype) if i.is_floating_point() else i.to(device)
            for i in inputs]

  def make_fn(compiled: bool):
    model = torch.compile(module) if compiled else module

    def call():
      with torch.no_grad():
        return model(*inputs)
    return call

  def check(reference):
    with torch.no_grad():
      out = tm.nhwc(module(*inputs))
    return max_abs_err(out, reference), tolerance(reference, dtype_name(dtype))

  return TorchTwin(make_fn, check)


def johnson_twin(config, params, x, dtype) -> TorchTwin:
  net = tm.JohnsonNet(config.channels(), config.num_residual, config.pixel_scale,
                      getattr(config, "output", "linear"),
                      getattr(config, "tanh_constant", 150.0)).load(params)
  return _inference_twin(net, [tm.nchw(x)], dtype)


def msgnet_twin(config, params, x, gram, dtype) -> TorchTwin:
  net = tm.MSGNet(config.ngf, config.stem_features, config.n_blocks, config.pixel_scale,
                  getattr(config, "output_offset", 0.0)).load(params)
  if config.norm_affine:
    raise NotImplementedError("the PyTorch MSG-Net twin has no affine instance norms")
  return _inference_twin(net, [tm.nchw(x), torch.from_numpy(np.array(gram, np.float32))], dtype)


def adain_twin(config, encoder, params, x, style, dtype) -> TorchTwin:
  enc = tm.VGGFeatures(encoder.depth, encoder.widths, encoder.pooling, encoder.padding,
                       encoder.convention).load(encoder.params)
  dec = tm.AdaINDecoder(config.channels(), encoder.depth, encoder.widths[3]).load(params)
  return _inference_twin(tm.AdaINNet(enc, dec, config.eps), [tm.nchw(x), tm.nchw(style)], dtype)


def stylebank_twin(config, params, x, ids, dtype) -> TorchTwin:
  if config.upsample != "nearest":
    raise NotImplementedError("the PyTorch StyleBank twin upsamples with nearest + conv only")
  net = tms.StyleBankNet(config.channels(), len(params["banks"]), config.bank_layers,
                         config.bank_kernel, config.pixel_scale, config.output_offset).load(params)
  return _inference_twin(net, [tm.nchw(x), torch.from_numpy(np.asarray(ids, np.int64))], dtype)


def magenta_twin(config, loss_net, params, x, style, dtype) -> TorchTwin:
  enc = tm.VGGFeatures(loss_net.depth, loss_net.widths, loss_net.pooling, loss_net.padding,
                       loss_net.convention).load(loss_net.params)
  net = tms.MagentaNet(enc, config.predictor_layers, config.channels(), config.num_residual,
                       config.bottleneck).load(params)
  return _inference_twin(net, [tm.nchw(x), tm.nchw(style)], dtype)


# --------------------------------------------------------------------------------------------------
# Gatys and histogram losses: one Adam iteration on the image


def histogram_match_sorted(f: torch.Tensor, sorted_values: torch.Tensor,
                           count: float) -> torch.Tensor:
  """jaxstyle.losses.histogram_match(method='sort') without masks, for NCHW `f` `[1, C, H, W]`.

  Each channel's value of rank r among n pixels gets the target's quantile at r / (n - 1),
  interpolated between `sorted_values` `[1, C, M]` (the first `count` entries are the target's).
  """
  x = f.detach().flatten(2)
  n = x.shape[-1]
  order = torch.argsort(x, dim=-1, stable=True)
  ranks = torch.empty_like(order).scatter_(
      -1, order, torch.arange(n, device=x.device).expand_as(order)).to(torch.float32)
  ratio = (count - 1) / max(n - 1, 1) if n > 1 else 0.0
  pos = ranks * torch.tensor(ratio, dtype=torch.float32)
  last = max(int(count) - 1, 0)
  lo = torch.floor(pos).long().clamp(max=last)
  hi = (lo + 1).clamp(max=last)
  frac = pos - lo.to(torch.float32)
  t_lo, t_hi = sorted_values.gather(-1, lo), sorted_values.gather(-1, hi)
  return (t_lo + frac * (t_hi - t_lo)).view_as(f)


def optim_twin(objective, args, content, spec: optimize.OptimizerSpec, slack: float,
               what: str = "Gatys") -> TorchTwin:
  """Loss + backward + `torch.optim.Adam` step on z, with x = (1 + 2s) sigmoid(z) - s.

  The loss is the Gatys objective (content, Gram, TV), plus Risser et al.'s histogram terms
  when `objective` has `histogram_layers` (sort matching, one style, no masks).
  """
  tm.require_cpu(what)
  net_j = args["net"]
  net = tm.VGGFeatures(net_j.depth, net_j.widths, net_j.pooling, net_j.padding,
                       net_j.convention).load(net_j.params)
  for p in net.parameters():
    p.requires_grad_(False)
  layers = objective.layers()
  content_t = {k: tm.nchw(v) for k, v in args["content"].items()}
  grams_t = {k: torch.from_numpy(np.array(v, np.float32)) for k, v in args["grams"].items()}
  histogram_layers = getattr(objective, "histogram_layers", ())
  if histogram_layers and (objective.num_styles != 1 or objective.histogram_method != "sort"):
    raise NotImplementedError("the histogram twin matches one style by sorting")
  hists_t = {k: (torch.from_numpy(np.array(v[0].sorted_values, np.float32)), float(v[0].count[0]))
             for k, v in args.get("hists", {}).items()}
  blend = [float(b) for b in np.asarray(args["blend"])]
  # Per-layer loss divisors (the method normalises each layer by its target's mean square).
  scale = jax.tree.map(lambda v: np.asarray(v, np.float64), args.get("scale"))
  content_div = lambda l: float(scale["content"][l]) if scale else 1.0
  style_div = lambda l, s, kind="style": float(scale[kind][l][s]) if scale else 1.0

  def loss_fn(z: torch.Tensor) -> torch.Tensor:
    x = (1.0 + 2.0 * slack) * torch.sigmoid(z) - slack
    feats = net(x, layers)
    loss = torch.zeros(())
    for layer, w in zip(objective.content_layers, objective.content_layer_weights):
      term = (feats[layer] - content_t[layer]).square().mean() / content_div(layer)
      loss = loss + objective.content_weight * w * term
    for layer, w in zip(objective.style_layers, objective.style_layer_weights):
      g = tm.gram(feats[layer])
      for s in range(objective.num_styles):
        term = (g - grams_t[layer][s]).square().mean() / style_div(layer, s)
        loss = loss + objective.style_weight * w * blend[s] * term
    for layer, w in zip(histogram_layers, getattr(objective, "histogram_layer_weights", ())):
      matched = histogram_match_sorted(feats[layer], *hists_t[layer])
      term = (feats[layer] - matched).square().mean() / style_div(layer, 0, "hist")
      loss = loss + objective.histogram_weight * w * blend[0] * term
    if objective.tv_weight:
      loss = loss + objective.tv_weight * tm.total_variation_mean(x)
    return loss

  z0 = tm.nchw(np.asarray(optimize.from_image(content, slack))[None])
  lr = spec.learning_rate or optimize.DEFAULT_ADAM_LR

  def make_fn(compiled: bool):
    z = z0.clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    f = torch.compile(loss_fn) if compiled else loss_fn

    def call():
      opt.zero_grad(set_to_none=True)
      loss = f(z)
      loss.backward()
      opt.step()
      return loss
    return call

  def check(reference: Any):
    """Relative error of the loss and of the gradient (max abs error / max |grad|), worst of two."""
    loss_j, grad_j = reference
    z = z0.clone().requires_grad_(True)
    loss = loss_fn(z)
    loss.backward()
    loss = loss.detach()
    loss_err = abs(loss.item() - loss_j) / max(abs(loss_j), 1e-12)
    grad_t = tm.nhwc(z.grad)[0]
    grad_err = max_abs_err(grad_t, grad_j) / max(float(np.max(np.abs(grad_j))), 1e-12)
    return max(loss_err, grad_err), 1e-3

  return TorchTwin(make_fn, check)

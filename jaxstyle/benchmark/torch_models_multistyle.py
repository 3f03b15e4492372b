"""PyTorch twins of the multi-style networks: StyleBank (E, banks K_i, D) and Magenta (Ghiasi).

Written for the benchmark after the Flax modules in `jaxstyle.methods.stylebank.model` and
`jaxstyle.methods.magenta.model`, layer for layer (reflection padding, instance norm with the biased
variance and eps inside the square root, nearest x2 upsampling + conv), NCHW in and out; `load`
copies the Flax parameter tree in (see `torch_models` for the layout conventions).
"""
from typing import Dict, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from jaxstyle.benchmark import torch_models as tm

_tensor = tm._tensor  # pylint: disable=protected-access
_load_norm = tm._load_norm  # pylint: disable=protected-access


def _affine_norm(c: int) -> nn.InstanceNorm2d:
  # jaxstyle.nn.InstanceNorm defaults: learned scale and bias, eps 1e-5, no running statistics.
  return nn.InstanceNorm2d(c, affine=True)


# --------------------------------------------------------------------------------------------------
# StyleBank (Chen et al. 2017)


class StyleBankNet(nn.Module):
  """jaxstyle.methods.stylebank.StyleBankNet: (RGB [0, 1] NCHW, style ids [B]) -> RGB NCHW.

  The banks are stored stacked (`[S, C, C, k, k]`), and each sample's bank is gathered by its id and
  run as one grouped convolution over the batch (no Python loop over samples, traceable by
  torch.compile); the JAX side runs them as batched matmuls (`jaxstyle.nn.per_sample_conv`).
  """

  def __init__(self, channels=(32, 64, 128), num_styles: int = 1, bank_layers: int = 1,
               bank_kernel: int = 3, pixel_scale: float = 255.0, output_offset: float = 0.5):
    super().__init__()
    c1, c2, c3 = channels
    self.scale, self.k, self.offset = pixel_scale, bank_kernel, output_offset
    self.enc = nn.ModuleList([tm.PadConv(3, c1, 9), tm.PadConv(c1, c2, 3, 2),
                              tm.PadConv(c2, c3, 3, 2)])
    self.enc_norms = nn.ModuleList([_affine_norm(c) for c in (c1, c2, c3)])
    shape = (bank_layers, num_styles, c3)
    self.bank_w = nn.Parameter(torch.zeros(shape + (c3, bank_kernel, bank_kernel)))
    self.bank_b = nn.Parameter(torch.zeros(shape))
    # IN + ReLU between stacked bank convolutions (bank_layers > 1): per-style scale and bias.
    self.bank_scale = nn.Parameter(torch.ones((max(bank_layers - 1, 0), num_styles, c3)))
    self.bank_bias = nn.Parameter(torch.zeros((max(bank_layers - 1, 0), num_styles, c3)))
    self.up = nn.ModuleList([tm.PadConv(c3, c2, 3), tm.PadConv(c2, c1, 3)])
    self.dec_norms = nn.ModuleList([_affine_norm(c) for c in (c2, c1)])
    self.out = tm.PadConv(c1, 3, 9)

  def encode(self, x01):
    x = x01 * self.scale
    for conv, norm in zip(self.enc, self.enc_norms):
      x = F.relu(norm(conv(x)))
    return x

  def _bank_conv(self, f, layer: int, ids):
    b, c, h, w = f.shape
    weight = self.bank_w[layer][ids].reshape(b * c, c, self.k, self.k)
    x = F.pad(f, (self.k // 2,) * 4, mode="reflect").reshape(1, b * c, h + self.k - 1,
                                                              w + self.k - 1)
    y = F.conv2d(x, weight, groups=b).reshape(b, c, h, w)
    return y + self.bank_b[layer][ids][:, :, None, None]

  def apply_bank(self, f, ids):
    """K_{ids[b]} (x) F_b for each sample: `[B, C3, h, w]` -> `[B, C3, h, w]`."""
    for layer in range(self.bank_w.shape[0]):
      if layer:
        g = self.bank_scale[layer - 1][ids][:, :, None, None]
        beta = self.bank_bias[layer - 1][ids][:, :, None, None]
        f = F.relu(F.instance_norm(f, eps=1e-5) * g + beta)
      f = self._bank_conv(f, layer, ids)
    return f

  def decode(self, f):
    x = f
    for conv, norm in zip(self.up, self.dec_norms):
      x = F.relu(norm(conv(tm.upsample2(x))))
    return self.out(x) / self.scale + self.offset

  def forward(self, x01, ids):
    return self.decode(self.apply_bank(self.encode(x01), ids))

  def load(self, p: dict):
    enc, dec = p["encoder"], p["decoder"]
    for i, (conv, norm) in enumerate(zip(self.enc, self.enc_norms), start=1):
      conv.load(enc[f"conv{i}"]), _load_norm(norm, enc[f"norm{i}"])
    banks = [p["banks"][name] for name in sorted(p["banks"])]
    with torch.no_grad():
      for s, bank in enumerate(banks):
        for layer in range(self.bank_w.shape[0]):
          conv = bank[f"conv{layer + 1}"]["conv"]
          self.bank_w[layer, s].copy_(_tensor(conv["kernel"]).permute(3, 2, 0, 1))
          self.bank_b[layer, s].copy_(_tensor(conv["bias"]))
          if layer:
            self.bank_scale[layer - 1, s].copy_(_tensor(bank[f"norm{layer}"]["scale"]))
            self.bank_bias[layer - 1, s].copy_(_tensor(bank[f"norm{layer}"]["bias"]))
    for i, (conv, norm) in enumerate(zip(self.up, self.dec_norms), start=1):
      conv.load(dec[f"up{i}"]["conv_layer"]), _load_norm(norm, dec[f"norm{i}"])
    self.out.load(dec["out"])
    return self


# --------------------------------------------------------------------------------------------------
# Magenta arbitrary stylization (Ghiasi et al. 2017), VGG style predictor


def _load_dense(linear: nn.Linear, p: dict):
  with torch.no_grad():
    linear.weight.copy_(_tensor(p["kernel"]).t())
    linear.bias.copy_(_tensor(p["bias"]))


def cond_norm(x, gamma, beta, eps: float = 1e-5):
  """jaxstyle.nn.adaptive.ConditionalInstanceNorm with given per-sample gamma, beta `[B, C]`."""
  return F.instance_norm(x, eps=eps) * gamma[:, :, None, None] + beta[:, :, None, None]


class MagentaNet(nn.Module):
  """Style prediction (VGG means -> 100-d embedding -> per-layer gamma/beta) + transformer.

  `forward(content, style)` stylizes RGB [0, 1] NCHW content with NCHW style images, one per
  content image: the style VGG pass, the predictor and the transformer, as the JAX case does.
  """

  def __init__(self, vgg_net: tm.VGGFeatures, predictor_layers: Sequence[str],
               channels=(32, 64, 128), num_residual: int = 5, bottleneck: int = 100):
    super().__init__()
    c1, c2, c3 = channels
    self.vgg, self.layers = vgg_net, tuple(predictor_layers)
    pooled = sum(vgg_net.convs[_conv_of(name)].out_channels for name in self.layers)
    self.predictor = nn.Linear(pooled, bottleneck)
    self.norm_layers: Dict[str, int] = {}
    for i in range(1, num_residual + 1):
      self.norm_layers.update({f"res{i}_conv1": c3, f"res{i}_conv2": c3})
    self.norm_layers.update({"expand1": c2, "expand2": c1, "expand3": 3})
    self.gammas = nn.ModuleDict({k: nn.Linear(bottleneck, c) for k, c in self.norm_layers.items()})
    self.betas = nn.ModuleDict({k: nn.Linear(bottleneck, c) for k, c in self.norm_layers.items()})
    self.contract = nn.ModuleList([tm.PadConv(3, c1, 9), tm.PadConv(c1, c2, 3, 2),
                                   tm.PadConv(c2, c3, 3, 2)])
    self.contract_norms = nn.ModuleList([_affine_norm(c) for c in (c1, c2, c3)])
    self.res = nn.ModuleList([nn.ModuleList([tm.PadConv(c3, c3, 3), tm.PadConv(c3, c3, 3)])
                              for _ in range(num_residual)])
    self.expand = nn.ModuleList([tm.PadConv(c3, c2, 3), tm.PadConv(c2, c1, 3),
                                 tm.PadConv(c1, 3, 9)])

  def pooled(self, style01):
    return self.pool(self.vgg(style01, self.layers))

  def pool(self, feats):
    """`log1p` of the predictor layers' spatial means: `[B, sum C]` (model.pooled_features)."""
    means = torch.cat([feats[k].mean(dim=(2, 3)) for k in self.layers], dim=1)
    return torch.log1p(means.clamp(min=0.0))

  def transform(self, content01, embedding):
    p: Dict[str, Tuple[torch.Tensor, torch.Tensor]] = {
        k: (self.gammas[k](embedding), self.betas[k](embedding)) for k in self.norm_layers}
    x = content01
    for conv, norm in zip(self.contract, self.contract_norms):
      x = F.relu(norm(conv(x)))
    for i, (conv1, conv2) in enumerate(self.res, start=1):
      h = F.relu(cond_norm(conv1(x), *p[f"res{i}_conv1"]))
      x = x + cond_norm(conv2(h), *p[f"res{i}_conv2"])
    for name, conv in zip(("expand1", "expand2"), self.expand[:2]):
      x = F.relu(cond_norm(conv(tm.upsample2(x)), *p[name]))
    return torch.sigmoid(cond_norm(self.expand[2](x), *p["expand3"]))

  def forward(self, content01, style01):
    return self.transform(content01, self.predictor(self.pooled(style01)))

  def load(self, p: dict):
    _load_dense(self.predictor, p["predictor"]["bottleneck"])
    for k in self.norm_layers:
      _load_dense(self.gammas[k], p["norm_params"][f"{k}_gamma"])
      _load_dense(self.betas[k], p["norm_params"][f"{k}_beta"])
    t = p["transformer"]
    for i, (conv, norm) in enumerate(zip(self.contract, self.contract_norms), start=1):
      conv.load(t[f"contract{i}"]), _load_norm(norm, t[f"contract{i}_norm"])
    for i, (conv1, conv2) in enumerate(self.res, start=1):
      conv1.load(t[f"res{i}_conv1"]), conv2.load(t[f"res{i}_conv2"])
    self.expand[0].load(t["expand1"]["conv_layer"])
    self.expand[1].load(t["expand2"]["conv_layer"])
    self.expand[2].load(t["expand3"])
    return self


def _conv_of(relu_name: str) -> str:
  return "conv" + relu_name[len("relu"):]

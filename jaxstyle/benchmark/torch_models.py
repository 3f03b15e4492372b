"""PyTorch twins of jaxstyle's networks, loaded with the same weights, for side-by-side timing.

Each module mirrors one Flax module layer for layer (same padding, normalisation and upsampling) so
that its output equals the JAX one up to float rounding; `load_*` copies a Flax parameter tree into
it. Only the benchmark imports this file, and only when torch is installed: torch is never a runtime
dependency of the library.

Layout: PyTorch is NCHW, so every module takes and returns NCHW tensors; Flax kernels `[kh, kw, in,
out]` become PyTorch weights `[out, in, kh, kw]`.
"""
from typing import Dict, Sequence

import jax
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from jaxstyle import vgg as jvgg

CAFFE_MEAN_BGR = jvgg.CAFFE_MEAN_BGR


def _tensor(a) -> torch.Tensor:
  return torch.from_numpy(np.array(a, np.float32))


def _load_conv(conv: nn.Conv2d, p: dict):
  """Copies a Flax `nn.Conv` ({'kernel': HWIO, 'bias'}) into `conv`."""
  with torch.no_grad():
    conv.weight.copy_(_tensor(p["kernel"]).permute(3, 2, 0, 1))
    if conv.bias is not None:
      conv.bias.copy_(_tensor(p["bias"]))


def _load_norm(norm: nn.InstanceNorm2d, p: dict):
  if norm.affine:
    with torch.no_grad():
      norm.weight.copy_(_tensor(p["scale"]))
      norm.bias.copy_(_tensor(p["bias"]))


def upsample2(x: torch.Tensor) -> torch.Tensor:
  return F.interpolate(x, scale_factor=2, mode="nearest")


class PadConv(nn.Module):
  """jaxstyle.nn.ConvLayer: explicit padding ('reflect'/'zero'/'none') then a VALID convolution."""

  def __init__(self, cin: int, cout: int, k: int, stride: int = 1, padding: str = "reflect"):
    super().__init__()
    self.pad = 0 if padding == "none" else k // 2
    self.mode = "reflect" if padding == "reflect" else "constant"
    self.conv = nn.Conv2d(cin, cout, k, stride)

  def forward(self, x):
    if self.pad:
      x = F.pad(x, (self.pad,) * 4, mode=self.mode)
    return self.conv(x)

  def load(self, p: dict):
    _load_conv(self.conv, p["conv"])


# --------------------------------------------------------------------------------------------------
# VGG (loss network, AdaIN encoder)


class VGGFeatures(nn.Module):
  """jaxstyle.vgg.VGG with the Caffe preprocessing: RGB [0, 1] NCHW -> {layer: NCHW features}."""

  def __init__(self, depth: int = 16, widths: Sequence[int] = jvgg.WIDTHS, pooling: str = "max",
               padding: str = "zero", convention: str = "caffe"):
    super().__init__()
    self.depth, self.pooling, self.convention = depth, pooling, convention
    self.names = jvgg.conv_names(depth)
    cin, convs = 3, {}
    for b, n in enumerate(jvgg.BLOCKS[depth], start=1):
      for i in range(1, n + 1):
        convs[f"conv{b}_{i}"] = nn.Conv2d(cin, widths[b - 1], 3, padding=1,
                                          padding_mode="zeros" if padding == "zero" else "reflect")
        cin = widths[b - 1]
    self.convs = nn.ModuleDict(convs)
    if convention == "caffe":
      self.register_buffer("mean", torch.tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1))
    else:
      self.register_buffer("mean", torch.tensor(jvgg.IMAGENET_MEAN).view(1, 3, 1, 1))
      self.register_buffer("std", torch.tensor(jvgg.IMAGENET_STD).view(1, 3, 1, 1))

  def preprocess(self, x01):
    if self.convention == "caffe":
      return x01.flip(1) * 255.0 - self.mean
    return (x01 - self.mean) / self.std

  def forward(self, x01: torch.Tensor, layers: Sequence[str]) -> Dict[str, torch.Tensor]:
    order = jvgg.layer_names(self.depth)
    last = max(order.index(name) for name in layers)
    x, out = self.preprocess(x01), {}
    for name in order[:last + 1]:
      if name.startswith("conv"):
        x = self.convs[name](x)
      elif name.startswith("relu"):
        x = F.relu(x)
      else:
        x = F.max_pool2d(x, 2) if self.pooling == "max" else F.avg_pool2d(x, 2)
      if name in layers:
        out[name] = x
    return out

  def load(self, params: dict):
    for name in self.names:
      _load_conv(self.convs[name], params[name])
    return self


def gram(f: torch.Tensor) -> torch.Tensor:
  """jaxstyle.losses.gram_matrix(normalize='chw') for NCHW features: [B, C, C]."""
  b, c, h, w = f.shape
  x = f.reshape(b, c, h * w)
  return torch.bmm(x, x.transpose(1, 2)) / (c * h * w)


# --------------------------------------------------------------------------------------------------
# Johnson et al. transformation network


class ResidualBlock(nn.Module):
  def __init__(self, c: int):
    super().__init__()
    self.conv1, self.norm1 = PadConv(c, c, 3), nn.InstanceNorm2d(c, affine=True)
    self.conv2, self.norm2 = PadConv(c, c, 3), nn.InstanceNorm2d(c, affine=True)

  def forward(self, x):
    y = F.relu(self.norm1(self.conv1(x)))
    return x + self.norm2(self.conv2(y))

  def load(self, p):
    self.conv1.load(p["conv1"]), self.conv2.load(p["conv2"])
    _load_norm(self.norm1, p["norm1"]), _load_norm(self.norm2, p["norm2"])


class JohnsonNet(nn.Module):
  """jaxstyle.methods.johnson.TransformerNet: RGB [0, 1] NCHW -> RGB ~[0, 1] NCHW."""

  def __init__(self, channels=(32, 64, 128), num_residual: int = 5, pixel_scale: float = 255.0,
               output: str = "linear", tanh_constant: float = 150.0):
    super().__init__()
    c1, c2, c3 = channels
    self.scale = pixel_scale
    # JohnsonConfig.output: 'tanh' = tanh_constant * tanh(x) around the ImageNet mean pixel.
    self.output, self.tanh_constant = output, tanh_constant
    self.register_buffer("mean255", torch.tensor(jvgg.IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0)
    self.down = nn.ModuleList([PadConv(3, c1, 9), PadConv(c1, c2, 3, 2), PadConv(c2, c3, 3, 2)])
    self.down_norms = nn.ModuleList([nn.InstanceNorm2d(c, affine=True) for c in (c1, c2, c3)])
    self.res = nn.ModuleList([ResidualBlock(c3) for _ in range(num_residual)])
    self.up = nn.ModuleList([PadConv(c3, c2, 3), PadConv(c2, c1, 3)])
    self.up_norms = nn.ModuleList([nn.InstanceNorm2d(c, affine=True) for c in (c2, c1)])
    self.out = PadConv(c1, 3, 9)

  def forward(self, x01):
    x = x01 * self.scale
    for conv, norm in zip(self.down, self.down_norms):
      x = F.relu(norm(conv(x)))
    for block in self.res:
      x = block(x)
    for conv, norm in zip(self.up, self.up_norms):
      x = F.relu(norm(conv(upsample2(x))))
    x = self.out(x)
    if self.output == "tanh":
      x = self.tanh_constant * torch.tanh(x) + self.mean255
    return x / self.scale

  def load(self, p: dict):
    for i, (conv, norm) in enumerate(zip(self.down, self.down_norms), start=1):
      conv.load(p[f"conv{i}_conv"]), _load_norm(norm, p[f"conv{i}_norm"])
    for i, block in enumerate(self.res, start=1):
      block.load(p[f"res{i}"])
    for i, (conv, norm) in enumerate(zip(self.up, self.up_norms), start=1):
      conv.load(p[f"up{i}_conv"]["conv_layer"]), _load_norm(norm, p[f"up{i}_norm"])
    self.out.load(p["out_conv"])
    return self


# --------------------------------------------------------------------------------------------------
# MSG-Net generator


class Bottleneck(nn.Module):
  """jaxstyle.nn.Bottleneck / UpBottleneck (pre-activation, expansion 4, IN without affine)."""

  def __init__(self, cin: int, planes: int, stride: int = 1, downsample: bool = False,
               up: bool = False):
    super().__init__()
    cout = planes * 4
    self.up = up
    self.residual = PadConv(cin, cout, 1, stride, "none") if (downsample or up) else None
    self.norms = nn.ModuleList([nn.InstanceNorm2d(c) for c in (cin, planes, planes)])
    self.conv1 = PadConv(cin, planes, 1, padding="none")
    self.conv2 = PadConv(planes, planes, 3, 1 if up else stride)
    self.conv3 = PadConv(planes, cout, 1, padding="none")

  def forward(self, x):
    if self.residual is None:
      res = x
    else:
      res = self.residual(upsample2(x) if self.up else x)
    y = self.conv1(F.relu(self.norms[0](x)))
    y = F.relu(self.norms[1](y))
    y = self.conv2(upsample2(y) if self.up else y)
    return res + self.conv3(F.relu(self.norms[2](y)))

  def load(self, p: dict):
    if self.residual is not None:
      self.residual.load(p["residual"]["conv_layer"] if self.up else p["residual"])
    self.conv1.load(p["conv1"])
    self.conv2.load(p["conv2"]["conv_layer"] if self.up else p["conv2"])
    self.conv3.load(p["conv3"])


class MSGNet(nn.Module):
  """jaxstyle.methods.msgnet.MSGNet: (content RGB [0, 1] NCHW, Gram [B|1, C, C]) -> RGB NCHW."""

  def __init__(self, ngf: int = 128, stem: int = 64, n_blocks: int = 6, pixel_scale: float = 255.0,
               output_offset: float = 0.0):
    super().__init__()
    inner, up_inner = max(1, stem // 2), max(1, stem // 4)
    self.scale = pixel_scale
    self.offset = output_offset * pixel_scale
    self.stem = PadConv(3, stem, 7)
    self.stem_norm = nn.InstanceNorm2d(stem)
    self.down1 = Bottleneck(stem, inner, 2, downsample=True)
    self.down2 = Bottleneck(inner * 4, ngf, 2, downsample=True)
    self.weight = nn.Parameter(torch.zeros(ngf * 4, ngf * 4))
    self.blocks = nn.ModuleList([Bottleneck(ngf * 4, ngf) for _ in range(n_blocks)])
    self.up1 = Bottleneck(ngf * 4, inner, up=True)
    self.up2 = Bottleneck(inner * 4, up_inner, up=True)
    self.out_norm = nn.InstanceNorm2d(up_inner * 4)
    self.out = PadConv(up_inner * 4, 3, 7)

  def encode(self, x01):
    x = x01.flip(1) * self.scale
    x = F.relu(self.stem_norm(self.stem(x)))
    return self.down2(self.down1(x))

  def forward(self, x01, gram_matrix):
    f = self.encode(x01)
    b, c, h, w = f.shape
    # CoMatch: (W G)^T X with X as [C, HW] (the paper's notation, channels first).
    p = torch.matmul(self.weight, gram_matrix).expand(b, c, c)
    y = torch.bmm(p.transpose(1, 2), f.reshape(b, c, h * w)).reshape(b, c, h, w)
    for block in self.blocks:
      y = block(y)
    y = self.out(F.relu(self.out_norm(self.up2(self.up1(y))))) + self.offset
    return y.flip(1) / self.scale

  def load(self, p: dict):
    enc, dec = p["encoder"], p["decoder"]
    self.stem.load(enc["stem"])
    self.down1.load(enc["down1"]), self.down2.load(enc["down2"])
    with torch.no_grad():
      self.weight.copy_(_tensor(p["comatch"]["weight"]))
    for i, block in enumerate(self.blocks):
      block.load(dec[f"block{i}"])
    self.up1.load(dec["up1"]), self.up2.load(dec["up2"])
    self.out.load(dec["out_conv"])
    return self


# --------------------------------------------------------------------------------------------------
# AdaIN: VGG encoder to relu4_1, AdaIN, mirrored decoder


def mean_std(f: torch.Tensor, eps: float = 1e-5):
  mean = f.mean(dim=(2, 3), keepdim=True)
  var = (f - mean).square().mean(dim=(2, 3), keepdim=True)
  return mean, torch.sqrt(var + eps)


def adain(content: torch.Tensor, style: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
  """jaxstyle.nn.adain (biased variance, eps inside the square root) for NCHW features."""
  c_mean, c_std = mean_std(content, eps)
  s_mean, s_std = mean_std(style, eps)
  return (content - c_mean) / c_std * s_std + s_mean


class AdaINDecoder(nn.Module):
  """jaxstyle.methods.adain.Decoder for a VGG16 (or 19) encoder: [B, 512, h, w] -> [B, 3, 8h, 8w]."""

  def __init__(self, channels=(64, 128, 256), depth: int = 16, in_channels: int = 512):
    super().__init__()
    c = channels
    layers = {"conv4_1": PadConv(in_channels, c[2], 3)}
    self.order = ["conv4_1"]
    for block in (3, 2, 1):
      self.order.append("up")
      for i in range(jvgg.BLOCKS[depth][block - 1], 0, -1):
        cin = c[block - 1]
        cout = ((c[block - 2] if block > 1 else 3) if i == 1 else c[block - 1])
        layers[f"conv{block}_{i}"] = PadConv(cin, cout, 3)
        self.order.append(f"conv{block}_{i}")
    self.convs = nn.ModuleDict(layers)

  def forward(self, t):
    x = t
    for name in self.order:
      if name == "up":
        x = upsample2(x)
      else:
        x = self.convs[name](x)
        if name != "conv1_1":
          x = F.relu(x)
    return x

  def load(self, p: dict):
    for name, conv in self.convs.items():
      conv.load(p[name])
    return self


class AdaINNet(nn.Module):
  """Encoder + AdaIN + decoder: (content, style) RGB [0, 1] NCHW -> stylized RGB NCHW."""

  def __init__(self, encoder: VGGFeatures, decoder: AdaINDecoder, eps: float = 1e-5):
    super().__init__()
    self.encoder, self.decoder, self.eps = encoder, decoder, eps

  def forward(self, content01, style01):
    f_c = self.encoder(content01, ("relu4_1",))["relu4_1"]
    f_s = self.encoder(style01, ("relu4_1",))["relu4_1"]
    return self.decoder(adain(f_c, f_s, self.eps))


def nchw(x) -> torch.Tensor:
  """NHWC array (NumPy/JAX) -> contiguous NCHW float32 tensor."""
  return torch.from_numpy(np.ascontiguousarray(np.asarray(x, np.float32).transpose(0, 3, 1, 2)))


def device() -> torch.device:
  """Where the twins run: CUDA when JAX runs on a GPU too (both sides on one chip), else the CPU."""
  on_gpu = jax.default_backend() == "gpu" and torch.cuda.is_available()
  return torch.device("cuda" if on_gpu else "cpu")


def require_cpu(what: str):
  """The optimisation and train-step twins are CPU-only: refuse rather than time CPU vs GPU."""
  if device().type != "cpu":
    raise NotImplementedError(f"the PyTorch {what} twin runs on the CPU only; not timed beside "
                              "a GPU (use --torch=none)")


def total_variation_mean(x: torch.Tensor) -> torch.Tensor:
  """jaxstyle.losses.total_variation(x, 'l2', 'mean') for NCHW: mean squared neighbour
  differences down plus across."""
  return ((x[:, :, 1:] - x[:, :, :-1]).square().mean()
          + (x[..., 1:] - x[..., :-1]).square().mean())


def nhwc(t: torch.Tensor) -> np.ndarray:
  return t.detach().float().permute(0, 2, 3, 1).cpu().numpy()

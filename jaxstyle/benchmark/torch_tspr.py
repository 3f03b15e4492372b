"""PyTorch twin of the TSPR generator at inference (Svoboda et al. 2020) for the benchmark.

Written after `jaxstyle.methods.tspr.model.Generator` and `jaxstyle.nn.recombination`, layer for
layer: `decode(recombine(encode(x), encode(style)))` in eval mode (attention BatchNorm running
statistics, no dropout), RGB [0, 1] NCHW in and out. The kNN selection runs in torch (squared
distances `|q|^2 - 2 q.k + |k|^2` as the Flax layer, `topk`, query chunks); the attention gathers
only the `k` neighbours, as the Flax layer does. `load` copies the Flax variables tree
(`{'params', 'batch_stats'}`) in: conv kernels HWIO -> OIHW, transposed-conv kernels
`[k, k, Cout, Cin]` -> `[Cin, Cout, k, k]`, dense kernels `[in, out]` -> `[out, in]`.
"""
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from jaxstyle.benchmark import torch_models as tm
from jaxstyle.benchmark import torch_models_multistyle as tms
from jaxstyle.benchmark.case import TorchTwin
from jaxstyle.benchmark.torch_cases import _inference_twin  # pylint: disable=protected-access
from jaxstyle.benchmark.torch_cases import dtype_name

_tensor = tm._tensor  # pylint: disable=protected-access
_load_dense = tms._load_dense  # pylint: disable=protected-access


def instance_norm(x: torch.Tensor) -> torch.Tensor:
  """jaxstyle InstanceNorm without affine (biased variance, eps 1e-5 inside the square root)."""
  if x.shape[2] * x.shape[3] == 1:
    # A single position normalises to exactly 0 (the Flax result), but torch refuses 1x1 inputs:
    # the global-style branch reaches 1x1 on small images.
    return torch.zeros_like(x)
  return F.instance_norm(x, eps=1e-5)


class ConvNormReLU(nn.Module):
  """model.ConvNormReLU: padded conv -> instance norm -> ReLU. `[B,C,H,W] -> [B,F,H/s,W/s]`."""

  def __init__(self, cin: int, cout: int, k: int, stride: int = 1, padding: str = "zero"):
    super().__init__()
    self.conv = tm.PadConv(cin, cout, k, stride, padding)

  def forward(self, x):
    return F.relu(instance_norm(self.conv(x)))

  def load(self, p: dict):
    self.conv.load(p["conv"])


class ResnetBlock(nn.Module):
  """model.ResnetBlock: conv -> IN -> PReLU (one slope) -> conv -> IN, plus identity."""

  def __init__(self, c: int):
    super().__init__()
    self.conv1, self.conv2 = tm.PadConv(c, c, 3), tm.PadConv(c, c, 3)
    self.slope = nn.Parameter(torch.full((1,), 0.25))

  def forward(self, x):
    y = F.prelu(instance_norm(self.conv1(x)), self.slope)
    return x + instance_norm(self.conv2(y))

  def load(self, p: dict):
    self.conv1.load(p["conv1"]), self.conv2.load(p["conv2"])
    with torch.no_grad():
      self.slope.copy_(_tensor(p["prelu"]["negative_slope"]).reshape(1))


class Encoder(nn.Module):
  """model.Encoder: image `[B,3,H,W]` in [-1,1] -> codes (content `[B,4g,H/4,W/4]`, style
  `[B,8g,H/4,W/4]`, middle)."""

  def __init__(self, ngf: int, n_blocks: int, global_style: bool):
    super().__init__()
    g = self.ngf = ngf
    self.stem = ConvNormReLU(3, g, 7, padding="reflect")
    self.down = nn.ModuleList([ConvNormReLU(g, 2 * g, 3, 2), ConvNormReLU(2 * g, 4 * g, 3, 2)])
    self.blocks = nn.ModuleList([ResnetBlock(4 * g) for _ in range(n_blocks)])
    self.latent = ConvNormReLU(4 * g, 12 * g, 1)
    self.global_style = (nn.ModuleList([ConvNormReLU(4 * g, 4 * g, 3, 2) for _ in range(3)])
                         if global_style else None)

  def forward(self, x) -> Dict[str, torch.Tensor]:
    """-> {'content', 'style', 'middle' `[B,2g,H/2,W/2]`}, as the Flax encoder."""
    x = self.stem(x)
    middle = x = self.down[0](x)
    for layer in (self.down[1], *self.blocks):
      x = layer(x)
    z = self.latent(x)
    content, style = z[:, :4 * self.ngf], z[:, 4 * self.ngf:]
    if self.global_style is not None:
      y = style[:, :4 * self.ngf]
      for layer in self.global_style:
        y = layer(y)
      y = y.mean(dim=(2, 3), keepdim=True).expand(-1, -1, *style.shape[2:])
      style = torch.cat([y, style[:, 4 * self.ngf:]], dim=1)
    return {"content": content, "style": style, "middle": middle}

  def load(self, p: dict):
    self.stem.load(p["stem"])
    for i, layer in enumerate(self.down):
      layer.load(p[f"down_{i}"])
    for i, block in enumerate(self.blocks):
      block.load(p[f"block_{i}"])
    self.latent.load(p["latent"])
    if self.global_style is not None:
      for i, layer in enumerate(self.global_style):
        layer.load(p["global_style"][f"down_{i}"])


class Decoder(nn.Module):
  """model.Decoder: latent `[B,12g,h,w]` -> image `[B,3,4h,4w]` in [-1,1]."""

  def __init__(self, ngf: int, n_blocks: int):
    super().__init__()
    g = ngf
    self.merge = ConvNormReLU(12 * g, 4 * g, 1)
    self.blocks = nn.ModuleList([ResnetBlock(4 * g) for _ in range(n_blocks)])
    self.up = nn.ModuleList([nn.ConvTranspose2d(4 * g, 2 * g, 4, 2, 1),
                             nn.ConvTranspose2d(2 * g, g, 4, 2, 1)])
    self.out = tm.PadConv(g, 3, 7)

  def forward(self, z):
    x = self.merge(z)
    for block in self.blocks:
      x = block(x)
    for up in self.up:
      x = F.relu(instance_norm(up(x)))
    return torch.tanh(self.out(x).float())

  def load(self, p: dict):
    self.merge.load(p["merge"])
    for i, block in enumerate(self.blocks):
      block.load(p[f"block_{i}"])
    with torch.no_grad():
      for i, up in enumerate(self.up):
        q = p[f"up_{i}"]["conv_transpose"]
        up.weight.copy_(_tensor(q["kernel"]).permute(3, 2, 0, 1))
        up.bias.copy_(_tensor(q["bias"]))
    self.out.load(p["out"])


def knn_indices(queries: torch.Tensor, keys: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
  """`[B,N,C]` x `[B,M,C]` -> `[B,N,k]` nearest keys per query (float32 distances, `chunk` rows)."""
  q, p = queries.float(), keys.float()
  p2 = p.square().sum(-1)[:, None, :]
  out = []
  for start in range(0, q.shape[1], chunk):
    qc = q[:, start:start + chunk]
    d = qc.square().sum(-1, keepdim=True) - 2.0 * qc @ p.transpose(1, 2) + p2
    out.append(d.topk(k, dim=-1, largest=False).indices)
  return torch.cat(out, dim=1)


class PeerAttention(nn.Module):
  """recombination.PeerAttention (eval): kNN on codes, softmax(softplus(a_i + b_j)) over k peers."""

  def __init__(self, d: int, k: int, chunk: int):
    super().__init__()
    self.k, self.chunk = k, chunk
    self.dense = nn.ModuleList([nn.Linear(d, d // 2), nn.Linear(d // 2, d // 4)])
    self.bn = nn.ModuleList([nn.BatchNorm1d(d // 2), nn.BatchNorm1d(d // 4)])
    self.query_score, self.peer_score = nn.Linear(d // 4, 1), nn.Linear(d // 4, 1)

  def embed(self, x):
    for dense, bn in zip(self.dense, self.bn):
      x = F.relu(bn(dense(x)))
    return x

  def forward(self, query_codes, peer_codes, peer_values, keep: Optional[torch.Tensor] = None,
              rate: float = 0.0):
    """`[B,N,C]`, `[B,M,C]`, `[B,M,D]` -> `[B,N,D]`; `keep` `[B,N,k]`: the edges dropout keeps."""
    b, n, c = query_codes.shape
    m, d = peer_codes.shape[1], peer_values.shape[-1]
    idx = knn_indices(query_codes, peer_codes, self.k, self.chunk).reshape(b, n * self.k)
    a = self.query_score(self.embed(query_codes.reshape(b * n, c))).reshape(b, n, 1)
    s = self.peer_score(self.embed(peer_codes.reshape(b * m, c))).reshape(b, m)
    scores = a + s.gather(1, idx).reshape(b, n, self.k)
    if keep is not None:
      scores = torch.where(keep, scores / (1.0 - rate), 0.0)
    w = torch.softmax(F.softplus(scores.float()), dim=-1).to(peer_values.dtype)
    v = peer_values.gather(1, idx[..., None].expand(-1, -1, d)).reshape(b, n, self.k, d)
    return torch.einsum("bnk,bnkd->bnd", w, v)

  def load(self, p: dict, stats: dict):
    for i, (dense, bn) in enumerate(zip(self.dense, self.bn)):
      _load_dense(dense, p["mlp"][f"dense_{i}"])
      with torch.no_grad():
        bn.weight.copy_(_tensor(p["mlp"][f"bn_{i}"]["scale"]))
        bn.bias.copy_(_tensor(p["mlp"][f"bn_{i}"]["bias"]))
        bn.running_mean.copy_(_tensor(stats["mlp"][f"bn_{i}"]["mean"]))
        bn.running_var.copy_(_tensor(stats["mlp"][f"bn_{i}"]["var"]))
    _load_dense(self.query_score, p["query_score"])
    _load_dense(self.peer_score, p["peer_score"])


class TSPRNet(nn.Module):
  """Encoder (content and style image), both recombination stages, main decoder: RGB [0,1] NCHW."""

  def __init__(self, ngf: int = 64, n_blocks: int = 6, global_style: bool = True, knn: int = 5,
               bidirectional: bool = True, knn_chunk: int = 4096):
    super().__init__()
    self.encoder = Encoder(ngf, n_blocks, global_style)
    # Stage 1 matches on content codes (4g), stage 2 on the new style codes (8g).
    self.style_stage = PeerAttention(4 * ngf, knn, knn_chunk)
    self.content_stage = PeerAttention(8 * ngf, knn, knn_chunk) if bidirectional else None
    self.decoder = Decoder(ngf, n_blocks)

  def recombine(self, z: dict, z_peer: dict, keep=(None, None), rate: float = 0.0):
    """Both stages on encoder outputs -> latent `[B,12g,h,w]`; `keep`: per-stage dropout masks."""
    b, _, h, w = z["content"].shape
    flat = lambda t: t.flatten(2).transpose(1, 2)  # [B,C,h,w] -> [B,hw,C]
    content, peer_content, peer_style = flat(z["content"]), flat(z_peer["content"]), flat(
        z_peer["style"])
    new_style = self.style_stage(content, peer_content, peer_style, keep[0], rate)
    new_content = content
    if self.content_stage is not None:
      new_content = self.content_stage(new_style, peer_style, peer_content, keep[1], rate)
    return torch.cat([new_content, new_style], dim=-1).transpose(1, 2).reshape(b, -1, h, w)

  def forward(self, content01, style01):
    z = self.recombine(self.encoder(content01 * 2.0 - 1.0), self.encoder(style01 * 2.0 - 1.0))
    return (self.decoder(z) + 1.0) * 0.5

  def load(self, variables: dict):
    p, stats = variables["params"], variables["batch_stats"]["peer_reg"]
    self.encoder.load(p["encoder"])
    self.style_stage.load(p["peer_reg"]["style_stage"], stats["style_stage"])
    if self.content_stage is not None:
      self.content_stage.load(p["peer_reg"]["content_stage"], stats["content_stage"])
    self.decoder.load(p["decoder"])
    return self


def tspr_twin(config, variables, x, style, dtype) -> TorchTwin:
  """Twin of the `tspr/inference` case: `TSPRNet(x, style)` with the case's Flax variables.

  float32 only. Under bfloat16 the two frameworks round the latent codes differently by an ulp or
  two, which changes about a fifth of the kNN neighbour sets (a discrete choice): the outputs then
  differ by far more than the runner's tolerance although both compute the same thing.
  """
  if dtype_name(dtype) == "bfloat16":
    raise NotImplementedError("the PyTorch TSPR twin is float32 only: bfloat16 rounding changes "
                              "kNN neighbour sets, so its output cannot be checked against JAX")
  net = TSPRNet(config.ngf, config.n_blocks, config.global_style, config.knn,
                config.peer_reg == "bidir", config.knn_chunk).load(variables)
  return _inference_twin(net, [tm.nchw(x), tm.nchw(style)], dtype)

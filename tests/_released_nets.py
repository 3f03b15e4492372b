"""PyTorch networks with the module layout (hence the state-dict keys) of two released models.

Written for the tests from the layouts the references document, not copied:
* `ExamplesTransformerNet`: pytorch/examples fast_neural_style `TransformerNet` (RGB 0-255 in/out).
* `MultiStyleNet`: PyTorch-Multi-Style-Transfer `Net` (BGR 0-255 in/out), whose encoder and
  Inspiration layer appear twice in its state dict (`model1.*`/`model.0.*`, `ins.*`/`model.1.*`).
Widths are parameters so the tests can run narrow copies; the key names do not depend on them.
"""
import torch
from torch import nn


class PadConv(nn.Module):
  """Reflection pad of k // 2, then a convolution (keys `conv2d.*`), optionally upsampled first."""

  def __init__(self, cin, cout, k, stride=1, upsample=None):
    super().__init__()
    self.upsample = upsample
    self.pad = k // 2
    self.conv2d = nn.Conv2d(cin, cout, k, stride)

  def forward(self, x):
    if self.upsample:
      x = nn.functional.interpolate(x, scale_factor=self.upsample, mode="nearest")
    if self.pad:
      x = nn.functional.pad(x, [self.pad] * 4, mode="reflect")
    return self.conv2d(x)


class _Residual(nn.Module):
  def __init__(self, c):
    super().__init__()
    self.conv1, self.in1 = PadConv(c, c, 3), nn.InstanceNorm2d(c, affine=True)
    self.conv2, self.in2 = PadConv(c, c, 3), nn.InstanceNorm2d(c, affine=True)

  def forward(self, x):
    return x + self.in2(self.conv2(torch.relu(self.in1(self.conv1(x)))))


class ExamplesTransformerNet(nn.Module):
  """conv1..3 / in1..3, res1..N, deconv1..2 / in4..5 (nearest x2 + conv), deconv3; linear out."""

  def __init__(self, c1=32, num_residual=5):
    super().__init__()
    c2, c3 = 2 * c1, 4 * c1
    self.conv1, self.in1 = PadConv(3, c1, 9), nn.InstanceNorm2d(c1, affine=True)
    self.conv2, self.in2 = PadConv(c1, c2, 3, 2), nn.InstanceNorm2d(c2, affine=True)
    self.conv3, self.in3 = PadConv(c2, c3, 3, 2), nn.InstanceNorm2d(c3, affine=True)
    for i in range(num_residual):
      setattr(self, f"res{i + 1}", _Residual(c3))
    self.num_residual = num_residual
    self.deconv1, self.in4 = PadConv(c3, c2, 3, upsample=2), nn.InstanceNorm2d(c2, affine=True)
    self.deconv2, self.in5 = PadConv(c2, c1, 3, upsample=2), nn.InstanceNorm2d(c1, affine=True)
    self.deconv3 = PadConv(c1, 3, 9)

  def forward(self, x):
    for conv, norm in ((self.conv1, self.in1), (self.conv2, self.in2), (self.conv3, self.in3)):
      x = torch.relu(norm(conv(x)))
    for i in range(self.num_residual):
      x = getattr(self, f"res{i + 1}")(x)
    for conv, norm in ((self.deconv1, self.in4), (self.deconv2, self.in5)):
      x = torch.relu(norm(conv(x)))
    return self.deconv3(x)


class _Bottleneck(nn.Module):
  """Pre-activation bottleneck, expansion 4; `conv_block` indices 2, 5, 8 hold the convolutions."""

  def __init__(self, cin, planes, stride=1, residual=False, up=False):
    super().__init__()
    out = planes * 4
    if up:
      self.residual_layer = PadConv(cin, out, 1, upsample=2)
      middle = PadConv(planes, planes, 3, upsample=2)
    else:
      self.residual_layer = nn.Conv2d(cin, out, 1, stride) if residual else None
      middle = PadConv(planes, planes, 3, stride)
    self.conv_block = nn.Sequential(
        nn.InstanceNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, planes, 1),
        nn.InstanceNorm2d(planes), nn.ReLU(), middle,
        nn.InstanceNorm2d(planes), nn.ReLU(), nn.Conv2d(planes, out, 1))

  def forward(self, x):
    skip = x if self.residual_layer is None else self.residual_layer(x)
    return skip + self.conv_block(x)


class _Inspiration(nn.Module):
  def __init__(self, c):
    super().__init__()
    self.weight = nn.Parameter(torch.rand(1, c, c) * 0.02)
    self.target = None

  def forward(self, x):
    b, c, h, w = x.shape
    p = torch.matmul(self.weight, self.target)                         # [1 or B, C, C]
    return torch.matmul(p.transpose(1, 2), x.reshape(b, c, h * w)).reshape(b, c, h, w)


class MultiStyleNet(nn.Module):
  """`model1` (siamese encoder), `ins` (CoMatch), and `model` = [model1, ins, blocks, up, up,
  norm, relu, 7x7 conv]."""

  def __init__(self, stem=64, ngf=128, n_blocks=6):
    super().__init__()
    c = ngf * 4
    self.model1 = nn.Sequential(
        PadConv(3, stem, 7), nn.InstanceNorm2d(stem), nn.ReLU(),
        _Bottleneck(stem, stem // 2, 2, residual=True),
        _Bottleneck(stem // 2 * 4, ngf, 2, residual=True))
    self.ins = _Inspiration(c)
    self.model = nn.Sequential(
        self.model1, self.ins, *[_Bottleneck(c, ngf) for _ in range(n_blocks)],
        _Bottleneck(c, stem // 2, up=True), _Bottleneck(stem // 2 * 4, stem // 4, up=True),
        nn.InstanceNorm2d(stem), nn.ReLU(), PadConv(stem, 3, 7))

  def set_target(self, style):
    f = self.model1(style)
    b, c, h, w = f.shape
    f = f.reshape(b, c, h * w)
    self.ins.target = torch.matmul(f, f.transpose(1, 2)) / (c * h * w)

  def forward(self, x):
    return self.model(x)

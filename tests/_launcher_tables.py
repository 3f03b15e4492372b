"""The case tables of `test_bad_inputs.py`, one per launcher: `(name, args, expected)` rows.

`expected` is `("error", text the one error line must contain, path that must stay unchanged)` or
`("ok", output file, expected [H, W, 3], reference content file or None)`.
"""
import json
import os
import shutil

import numpy as np
from PIL import Image

FAST = ["--size=32", "--steps=2", "--optimizer=adam", "--learning_rate=1e-6",
        "--set=content_layers=relu2_2", "--set=style_layers=relu1_1,relu2_1"]
# A 4k-parameter Johnson net whose loss stops at relu2_2: the cheapest real training run.
JOHNSON_TINY = ["--method=johnson", "--image_size=32", "--batch_size=2", "--set=width=0.125",
                "--set=num_residual=1", "--set=style_size=32", "--set=content_layers=relu2_2",
                "--set=style_layers=relu1_2,relu2_2"]



# or ("ok", output file, expected [H, W, 3], reference content file or None).


def _readonly_dir(d):
  """A folder nobody may write to: root ignores permission bits, so it gets /sys."""
  if os.geteuid() == 0:
    return "/sys"
  path = os.path.join(d, "readonly")
  os.makedirs(path, exist_ok=True)
  os.chmod(path, 0o555)
  return path


def stylize_table(p, d):
  ro = _readonly_dir(d)
  out = lambda name: os.path.join(d, "out", name, "result.png")  # noqa: E731
  for name in ("exists", "exists_overwrite"):
    os.makedirs(os.path.dirname(out(name)), exist_ok=True)
    Image.new("RGB", (5, 5)).save(out(name))
  os.makedirs(out("isdir"))
  rows = [  # (name, {flag: value} over the defaults, expected)
      ("missing", {"content": "/nonexistent/photo.png"}, "does not exist"),
      ("empty", {"content": p["empty.png"]}, "is empty"),
      ("truncated", {"content": p["cut.png"]}, "corrupt or truncated"),
      ("text_as_jpg", {"style": p["notes.jpg"]}, "not an image"),
      ("folder_as_image", {"style": p["folder.png"]}, "is a directory"),
      # A content folder is stylized image by image: into a folder, not one image file.
      ("content_folder_to_file", {"content": p["folder.png"]}, "--output names a folder"),
      ("bomb", {"style": p["bomb.png"]}, "pixels"),
      ("missing_style", {"style": "/nonexistent/style.jpg"}, "does not exist"),
      ("weights_noise", {"weights": p["noise.msgpack"]}, "noise.msgpack"),
      ("weights_unknown_format", {"weights": p["noise.bin"]}, "cannot tell the format"),
      ("weights_truncated", {"weights": p["cut.msgpack"]}, "cut.msgpack"),
      ("weights_incomplete", {"weights": p["partial.msgpack"]}, "conv1_2"),
      ("weights_text_pth", {"weights": p["notes.pth"]}, "notes.pth"),
      ("weights_empty_h5", {"weights": p["empty.h5"]}, "empty.h5"),
      ("weights_folder", {"weights": p["folder.png"]}, "is a directory"),
      ("weights_missing", {"weights": "/nonexistent/vgg.msgpack"}, "unknown weights"),
      ("unknown_method", {"method": "nope"}, "unknown method 'nope'"),
      ("negative_size", {"size": "-5"}, "--size must be positive"),
      ("zero_steps", {"steps": "0"}, "--steps must be positive"),
      ("size_not_a_number", {"size": "big"}, "--size=big"),
      ("unknown_flag", {"colour": "red"}, "colour"),
      ("bad_enum", {"optimizer": "sgd"}, "--optimizer=sgd"),
      ("negative_lr", {"learning_rate": "-1"}, "--learning_rate must be positive"),
      ("nan_lr", {"learning_rate": "nan"}, "--learning_rate must be positive and finite, got nan"),
      ("alpha_range", {"alpha": "1.5"}, "--alpha must be in [0, 1]"),
      ("mask_count", {"mask": p["mask.png"], "+style": p["gray.png"]}, "--mask given 1 times"),
      ("mask_bad_file", {"mask": p["cut.png"]}, "corrupt or truncated"),
      ("style_weights_count", {"style_weights": "1,2"}, "--style_weights has 2 values for 1"),
      ("style_weights_text", {"style_weights": "heavy"}, "--style_weights must be numbers"),
      ("style_weights_zero", {"style_weights": "0"}, "not all zero"),
      ("texture_feedforward", {"method": "johnson", "content": ""}, "needs a --content image"),
      ("johnson_no_checkpoint", {"method": "johnson"}, "needs --checkpoint"),
      ("checkpoint_missing", {"method": "adain", "checkpoint": "/nonexistent/run"},
       "does not exist"),
      ("init_missing", {"init": "/nonexistent/start.png"}, "--init must be"),
      ("style_index_text", {"style_index": "first"}, "--style_index must be integers"),
      ("exists", {"overwrite": False}, "exists (pass --overwrite"),
      ("isdir", {}, "is a directory"),
      ("readonly_dir", {"output": os.path.join(ro, "result.png")}, "not writable"),
      ("readonly_parent", {"output": os.path.join(ro, "new", "result.png")}, "not writable"),
      ("parent_is_file", {"output": os.path.join(p["file.txt"], "result.png")},
       "is not a directory"),
      ("bad_suffix", {"output": os.path.join(d, "out", "bad_suffix", "result.gif")},
       "must end in one of"),
      ("stray_argument", {"+": "photo.jpg"}, "unexpected arguments: photo.jpg"),
      ("set_unknown_key", {"set": "style_wieght=3"}, "unknown setting 'style_wieght'"),
      ("set_bad_value", {"set": "style_weight=lots"}, "bad value 'lots'"),
      ("set_no_equals", {"set": "style_weight"}, "--set expects key=value"),
      ("thin_style", {"style": p["thin.png"]}, "style image is too small for VGG layer"),
      ("histogram_alpha", {"method": "histogram", "alpha": "0.5"}, "histogram takes no --alpha"),
      ("thin_style_histogram", {"method": "histogram", "style": p["thin.png"], "set": "scales=1"},
       "style image is too small"),
  ]
  ok = [  # (name, {flag: value}, reference content, expected shape)
      ("gray", {"content": p["gray.png"]}, p["gray.png"], (27, 32, 3)),
      ("palette", {"content": p["pal.png"]}, p["pal.png"], (27, 32, 3)),
      ("rgba", {"content": p["rgba.png"]}, p["rgba.png"], (27, 32, 3)),
      ("cmyk", {"content": p["cmyk.jpg"]}, p["cmyk.jpg"], (27, 32, 3)),
      ("sixteen_bit", {"content": p["g16.png"]}, p["g16.png"], (27, 32, 3)),
      ("exif_rotated", {"content": p["exif.jpg"]}, p["exif.jpg"], (27, 32, 3)),
      ("one_pixel_content", {"content": p["one.png"]}, None, (32, 32, 3)),
      ("one_pixel_style", {"style": p["one.png"]}, p["rgb.png"], (27, 32, 3)),
      ("animated_gif", {"style": p["anim.gif"], "+style": p["cmyk.jpg"], "style_weights": "3,1"},
       p["rgb.png"], (27, 32, 3)),
      ("vgg19_weights", {"weights": p["w19.msgpack"]}, p["rgb.png"], (27, 32, 3)),
      ("exists_overwrite", {}, p["rgb.png"], (27, 32, 3)),
      ("new_nested_dir", {"output": os.path.join(d, "out", "new_nested_dir", "a", "b.jpg")},
       p["rgb.png"], (27, 32, 3)),
  ]
  base = {"content": p["rgb.png"], "style": p["rgb.png"], "weights": p["w16.msgpack"]}
  for name, flags, expect in rows:
    flags = {**base, "output": out(name), **flags}
    # Watch the case's own folder; outside the test folder (/sys), only the file itself.
    watch = flags["output"] if not flags["output"].startswith(d) else os.path.dirname(
        flags["output"])
    yield name, FAST + _argv(flags), ("error", expect, watch)
  for name, flags, ref, shape in ok:
    flags = {**base, "output": out(name), **flags}
    yield name, FAST + _argv(flags), ("ok", flags["output"], shape, ref)


def _argv(flags):
  args = []
  for key, value in flags.items():
    if key == "+":
      args.append(value)
    elif isinstance(value, bool):
      args.append(f"--{'' if value else 'no'}{key}")
    else:
      args.append(f"--{key.lstrip('+')}={value}")
  return args


def checkpoint_tables(p, d, johnson_wd):
  """Cases that need a trained Johnson workdir: (stylize rows, train rows)."""
  garbage = os.path.join(d, "garbage_ckpt")
  os.makedirs(os.path.join(garbage, "checkpoints", "4"))
  with open(os.path.join(garbage, "config.json"), "w") as f:
    json.dump({"method": "johnson", "config": {"model": {}}}, f)
  with open(os.path.join(garbage, "checkpoints", "4", "_CHECKPOINT_METADATA"), "wb") as f:
    f.write(np.random.default_rng(1).bytes(300))
  notjson = os.path.join(d, "notjson_ckpt")
  os.makedirs(notjson)
  with open(os.path.join(notjson, "config.json"), "w") as f:
    f.write("{not json")
  # Copies of the trained run whose config.json no longer describes its checkpoint.
  edited = {}
  for name, key, value in (("width", "width", 0.25), ("type", "num_residual", "abc")):
    edited[name] = os.path.join(d, f"edited_{name}_ckpt")
    shutil.copytree(johnson_wd, edited[name])
    path = os.path.join(edited[name], "config.json")
    with open(path) as f:
      saved = json.load(f)
    saved["config"]["model"][key] = value
    with open(path, "w") as f:
      json.dump(saved, f)
  out = lambda name: os.path.join(d, "out", name, "result.png")  # noqa: E731
  base = {"content": p["rgb.png"], "method": "johnson", "checkpoint": johnson_wd}
  stylize = [
      ("ckpt_other_method", {"method": "adain"}, ("error", "'johnson' model, not adain")),
      ("ckpt_garbage", {"checkpoint": garbage}, ("error", "checkpoint")),
      ("ckpt_not_json", {"checkpoint": notjson}, ("error", "cannot read")),
      ("ckpt_not_a_run", {"checkpoint": p["folder.png"]}, ("error", "not a jaxstyle training")),
      ("ckpt_with_set", {"set": "width=2"}, ("error", "takes no --set")),
      ("ckpt_exif", {"content": p["exif.jpg"]}, ("ok", (27, 32, 3))),
      ("ckpt_one_pixel", {"content": p["one.png"]}, ("ok", (32, 32, 3))),
      ("ckpt_thin_content", {"content": p["thin.png"]}, ("error", "too small for this network")),
      ("ckpt_config_width", {"checkpoint": edited["width"]}, ("error", "does not fit the model")),
      ("ckpt_config_type", {"checkpoint": edited["type"]}, ("error", "num_residual='abc' where an integer belongs")),
  ]
  for name, flags, expect in stylize:
    args = _argv({**base, "output": out(name), "size": 32, **flags})
    if expect[0] == "error":
      yield "stylize", name, args, ("error", expect[1], out(name))
    else:
      yield "stylize", name, args, ("ok", out(name), expect[1], None)
  common = JOHNSON_TINY + ["--steps=2", f"--weights={p['w16.msgpack']}"]
  train = [
      ("workdir_of_other_method", ["--method=adain", "--image_size=32", "--batch_size=2",
                                   "--steps=2", f"--weights={p['w16.msgpack']}",
                                   f"--workdir={johnson_wd}"], "holds a johnson run", johnson_wd),
      ("garbage_checkpoint_folder", [f"--workdir={garbage}"], "checkpoint",
       os.path.join(garbage, "checkpoints")),
  ]
  for name, extra, match, watch in train:
    args = extra if extra[0] == "--method=adain" else common + extra
    yield "train", name, args, ("error", match, watch)


def train_table(p, d):
  wd = lambda name: os.path.join(d, "runs", name)  # noqa: E731
  common = JOHNSON_TINY + ["--steps=2", f"--weights={p['w16.msgpack']}"]
  rows = [
      ("gatys_not_trainable", ["--method=gatys"], "--method=gatys cannot be trained"),
      ("unknown_method", ["--method=nope"], "--method=nope cannot be trained"),
      ("negative_steps", ["--steps=-3"], "--steps must be positive"),
      ("zero_batch", ["--batch_size=0"], "--batch_size must be positive"),
      ("negative_clip", ["--grad_clip_norm=-1"], "--grad_clip_norm must be >= 0"),
      ("nan_clip", ["--grad_clip_norm=nan"], "--grad_clip_norm must be >= 0 and finite"),
      ("nan_learning_rate", ["--learning_rate=nan"], "--learning_rate must be positive and finite"),
      ("image_size_too_small", ["--image_size=4"], "too small for this network"),
      ("steps_not_a_number", ["--steps=ten"], "--steps=ten"),
      ("content_dir_missing", ["--content_dir=/nonexistent/photos"], "is not a directory"),
      ("content_dir_is_file", [f"--content_dir={p['rgb.png']}"], "is not a directory"),
      ("content_dir_no_images", [f"--content_dir={p['folder.png']}"], "no images"),
      ("content_dir_all_unreadable", [f"--content_dir={p['bad_only']}"],
       f"none of the 3 images in {p['bad_only']} could be read"),
      ("style_dir_no_images", [f"--style_dir={p['folder.png']}"], "no images"),
      ("weights_noise", [f"--weights={p['noise.msgpack']}"], "noise.msgpack"),
      ("set_unknown_key", ["--set=widht=2"], "unknown setting 'widht'"),
      ("set_bad_value", ["--set=num_residual=many"], "bad value 'many'"),
      ("bad_style_image", [f"--set=style_image={p['cut.png']}"], "corrupt or truncated"),
  ]
  for name, extra, match in rows:
    yield name, common + [f"--workdir={wd(name)}"] + extra, ("error", match, wd(name))
  ckpt_file = wd("checkpoints_is_a_file")
  os.makedirs(ckpt_file)
  with open(os.path.join(ckpt_file, "checkpoints"), "w") as f:
    f.write("not a folder\n")
  yield ("checkpoints_is_a_file", common + [f"--workdir={ckpt_file}"],
         ("error", "checkpoints", ckpt_file))
  yield ("workdir_is_file", common + [f"--workdir={p['file.txt']}"],
         ("error", "exists and is not a directory", p["file.txt"]))


def convert_table(p, d):
  out = lambda name: os.path.join(d, "out", name, "vgg.msgpack")  # noqa: E731
  os.makedirs(out("output_is_dir"))
  rows = [
      ("no_input", [], "--input (or --fetch_hed) is required"),
      ("input_missing", ["--input=/nonexistent/vgg.h5"], "does not exist"),
      ("input_noise_h5", [f"--input={p['noise.msgpack']}", "--format=h5"], "noise.msgpack"),
      ("input_noise_unknown", [f"--input={p['noise.bin']}"], "cannot tell the format"),
      ("input_empty_h5", [f"--input={p['empty.h5']}"], "empty.h5"),
      ("input_text_pth", [f"--input={p['notes.pth']}"], "notes.pth"),
      ("input_truncated", [f"--input={p['cut.msgpack']}"], "cut.msgpack"),
      ("vgg19_as_16", [f"--input={p['w19.msgpack']}", "--depth=16"], "expected VGG16"),
      ("depth_17", [f"--input={p['w16.msgpack']}", "--depth=17"], "--depth=17"),
      ("convention_mismatch", [f"--input={p['w16.msgpack']}", "--convention=torchvision"],
       "converted for caffe input, not torchvision"),
      ("fetch_and_input", ["--fetch_hed", f"--input={p['w16.msgpack']}"], "not both"),
      ("input_is_output", [f"--input={p['w16.msgpack']}", f"--output={p['w16.msgpack']}"],
       "would overwrite --input"),
  ]
  for name, extra, match in rows:
    args = extra if any(a.startswith("--output") for a in extra) else extra + [
        f"--output={out(name)}"]
    yield name, args, ("error", match, os.path.dirname(out(name)))
  yield ("output_bad_suffix", [f"--input={p['w16.msgpack']}", f"--output={d}/out/x/vgg.h5"],
         ("error", "must end in one of .msgpack", f"{d}/out/x"))
  yield ("output_readonly", [f"--input={p['w16.msgpack']}",
                             f"--output={_readonly_dir(d)}/vgg.msgpack"],
         ("error", "not writable", f"{_readonly_dir(d)}/vgg.msgpack"))
  yield ("output_is_dir", [f"--input={p['w16.msgpack']}", f"--output={out('output_is_dir')}"],
         ("error", "is a directory", out("output_is_dir")))
  yield ("depth_16_ok", [f"--input={p['w16.msgpack']}", "--depth=16",
                         f"--output={out('depth_16_ok')}"], ("ok", out("depth_16_ok"), None, None))

"""Tests for jaxstyle.image: every odd file a user may hand us, atomic saving, resizing, colour."""
import io
import os
import struct
import zlib

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxstyle import image
from jaxstyle.errors import ImageError


def _gradient(h=24, w=32):
  y, x = np.mgrid[0:h, 0:w]
  img = np.stack([x * 255 // (w - 1), y * 255 // (h - 1), np.full_like(x, 128)], -1)
  return img.astype(np.uint8)


def _assert_one_line_error(path, match=None, **kwargs):
  with pytest.raises(ImageError) as e:
    image.load_image(str(path), **kwargs)
  msg = str(e.value)
  assert "\n" not in msg and str(path) in msg, msg
  if match:
    assert match in msg, msg
  return msg


# ------------------------------------------------------------------------------- broken files


def test_missing_empty_directory_and_text_files(tmp_path):
  _assert_one_line_error(tmp_path / "nope.png", "does not exist")
  (tmp_path / "empty.png").write_bytes(b"")
  _assert_one_line_error(tmp_path / "empty.png", "empty")
  _assert_one_line_error(tmp_path, "directory")
  (tmp_path / "notes.jpg").write_text("this is not an image\n")
  _assert_one_line_error(tmp_path / "notes.jpg", "not an image")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files(tmp_path, fmt):
  buf = io.BytesIO()
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(buf, fmt)
  path = tmp_path / f"cut.{fmt.lower()}"
  path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
  _assert_one_line_error(path, "corrupt or truncated")


def test_corrupt_png_payload(tmp_path):
  buf = io.BytesIO()
  Image.fromarray(_gradient()).save(buf, "PNG")
  data = bytearray(buf.getvalue())
  idat = data.index(b"IDAT")
  data[idat + 8: idat + 40] = b"\xff" * 32  # garbage inside the compressed stream
  path = tmp_path / "corrupt.png"
  path.write_bytes(bytes(data))
  _assert_one_line_error(path)


def _png_header_only(path, w, h):
  """A PNG that declares w x h pixels but holds almost no data: decoding it would be a bomb."""
  def chunk(kind, payload):
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(
        ">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
  ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
  path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                   + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b""))


def test_decompression_bomb(tmp_path, recwarn):
  path = tmp_path / "bomb.png"
  _png_header_only(path, 15000, 15000)  # 225 MP: above our 100 MP default and Pillow's own limit
  _assert_one_line_error(path, "limit")
  _assert_one_line_error(path, "decompression bomb", max_pixels=None)  # Pillow's limit still holds
  _png_header_only(path, 100, 100)
  _assert_one_line_error(path, "limit", max_pixels=5000)
  assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


# ------------------------------------------------------------------------------- colour modes


def _save(tmp_path, im, name, **kw):
  path = tmp_path / name
  im.save(path, **kw)
  return str(path)


def test_rgb_roundtrip_exact(tmp_path):
  arr = _gradient()
  out = image.load_image(_save(tmp_path, Image.fromarray(arr), "rgb.png"))
  assert out.dtype == np.float32 and out.shape == (24, 32, 3)
  np.testing.assert_allclose(out, arr / 255.0, atol=1e-6)


def test_grayscale_and_one_bit(tmp_path):
  gray = _gradient()[..., 0]
  out = image.load_image(_save(tmp_path, Image.fromarray(gray, "L"), "l.png"))
  np.testing.assert_allclose(out, np.repeat(gray[..., None] / 255.0, 3, -1), atol=1e-6)
  bits = Image.fromarray(gray > 128).convert("1")
  out = image.load_image(_save(tmp_path, bits, "bits.png"))
  np.testing.assert_array_equal(out[..., 0], (gray > 128).astype(np.float32))


def test_alpha_is_composited_on_white(tmp_path):
  rgba = np.zeros((8, 8, 4), np.uint8)
  rgba[..., 0] = 255                         # red...
  rgba[:, :4, 3] = 255                       # ...opaque on the left half
  rgba[:, 4:, 3] = 0                         # transparent on the right half
  rgba[0, 0, 3] = 128                        # half transparent corner
  out = image.load_image(_save(tmp_path, Image.fromarray(rgba, "RGBA"), "rgba.png"))
  np.testing.assert_allclose(out[1, 1], [1, 0, 0], atol=1e-6)
  np.testing.assert_allclose(out[1, 6], [1, 1, 1], atol=1e-6)
  np.testing.assert_allclose(out[0, 0], [1, 127 / 255, 127 / 255], atol=1e-2)
  la = Image.fromarray(np.stack([np.zeros((8, 8)), rgba[..., 3]], -1).astype(np.uint8), "LA")
  out = image.load_image(_save(tmp_path, la, "la.png"))
  np.testing.assert_allclose(out[1, 1], [0, 0, 0], atol=1e-6)
  np.testing.assert_allclose(out[1, 6], [1, 1, 1], atol=1e-6)


def test_palette_with_and_without_transparency(tmp_path):
  pal = Image.fromarray(_gradient()).quantize(16)
  expected = np.asarray(pal.convert("RGB"), np.float32) / 255.0
  np.testing.assert_allclose(image.load_image(_save(tmp_path, pal, "p.png")), expected, atol=1e-6)
  pal.info["transparency"] = 0
  out = image.load_image(_save(tmp_path, pal, "pt.png", transparency=0))
  index = np.asarray(pal)
  assert (index == 0).any()
  np.testing.assert_allclose(out[index == 0], 1.0, atol=1e-6)          # transparent -> white
  np.testing.assert_allclose(out[index != 0], expected[index != 0], atol=1e-6)
  gif = image.load_image(_save(tmp_path, pal, "pt.gif", transparency=0))
  np.testing.assert_allclose(gif[index == 0], 1.0, atol=1e-6)


def test_cmyk_jpeg(tmp_path):
  cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
  out = image.load_image(_save(tmp_path, cmyk, "cmyk.jpg", quality=100))
  np.testing.assert_allclose(out.mean((0, 1)), [1, 0, 0], atol=0.03)


def test_sixteen_bit_and_float_images(tmp_path):
  ramp = np.linspace(0, 65535, 64).astype(np.uint16).reshape(8, 8)
  out = image.load_image(_save(tmp_path, Image.fromarray(ramp), "g16.png"))
  np.testing.assert_allclose(out[..., 0], ramp / 65535.0, atol=1e-6)   # full 16-bit precision kept
  as_i = Image.fromarray(ramp.astype(np.int32))                      # mode I
  np.testing.assert_allclose(image.load_image(_save(tmp_path, as_i, "i.tif"))[..., 1],
                             ramp / 65535.0, atol=1e-6)
  f01 = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
  out = image.load_image(_save(tmp_path, Image.fromarray(f01), "f.tif"))
  np.testing.assert_allclose(out[..., 2], f01, atol=1e-6)
  wide = Image.fromarray(f01 * 1e6 - 5e5)                           # no natural range: stretched
  out = image.load_image(_save(tmp_path, wide, "wide.tif"))
  assert out.min() == 0.0 and out.max() == 1.0


def test_exif_orientation(tmp_path):
  arr = np.zeros((4, 6, 3), np.uint8)
  arr[0, 0] = 255                                   # white top-left pixel
  im = Image.fromarray(arr)
  exif = im.getexif()
  exif[0x0112] = 6                                  # "rotate 90 CW to display"
  out = image.load_image(_save(tmp_path, im, "rot.png", exif=exif.tobytes()))
  assert out.shape == (6, 4, 3)
  np.testing.assert_allclose(out[0, -1], 1.0)       # the top-left pixel went to the top-right


def test_one_by_one_and_resize_on_load(tmp_path):
  path = _save(tmp_path, Image.new("RGB", (1, 1), (10, 20, 30)), "dot.png")
  out = image.load_image(path)
  np.testing.assert_allclose(out[0, 0], np.array([10, 20, 30]) / 255.0, atol=1e-6)
  assert image.load_image(path, 5).shape == (5, 5, 3)
  assert image.load_image(_save(tmp_path, Image.fromarray(_gradient(24, 32)), "g.png"),
                          16).shape == (12, 16, 3)


# ------------------------------------------------------------------------------- masks, geometry


def test_load_mask(tmp_path):
  rgba = np.zeros((10, 20, 4), np.uint8)
  rgba[:, :10] = 255                                # opaque white left half
  mask = image.load_mask(_save(tmp_path, Image.fromarray(rgba, "RGBA"), "m.png"), (5, 8))
  assert mask.shape == (5, 8) and mask.dtype == np.float32
  assert mask.min() >= 0.0 and mask.max() <= 1.0
  np.testing.assert_allclose(mask[:, :3], 1.0, atol=1e-3)
  np.testing.assert_allclose(mask[:, -3:], 0.0, atol=1e-3)   # transparent counts as outside


def test_resize_antialiases_and_keeps_range():
  checker = (np.indices((64, 64)).sum(0) % 2).astype(np.float32)
  small = image.resize(checker, (16, 16))
  np.testing.assert_allclose(small, 0.5, atol=0.05)  # no aliasing into stripes
  step = np.zeros((32, 32, 3), np.float32)
  step[:, 16:] = 1.0
  big = image.resize(step, (32, 97))
  assert big.shape == (32, 97, 3) and big.min() >= 0.0 and big.max() <= 1.0
  assert image.resize_long_side(np.zeros((30, 60, 3)), 20).shape == (10, 20, 3)
  assert image.center_crop(np.zeros((30, 60, 3)), (10, 12)).shape == (10, 12, 3)


def test_make_grid(smooth_image, stripes_image):
  grid = image.make_grid([smooth_image, stripes_image[:24], smooth_image[..., 0]], height=48,
                         labels=["a", "b", "c"])
  assert grid.shape == (48, 64 + 128 + 64 + 2 * 4, 3)
  np.testing.assert_allclose(grid[:, 64:68], 1.0)   # white gutter


# ------------------------------------------------------------------------------- saving


@pytest.mark.parametrize("name,tol,mean_tol", [("out.png", 0.5 / 255 + 1e-5, 2e-3),
                                               ("out.jpg", 0.1, 5e-3)])
def test_save_roundtrip(tmp_path, smooth_image, name, tol, mean_tol):
  path = tmp_path / "sub" / "dir" / name
  image.save_image(str(path), smooth_image)
  err = np.abs(image.load_image(str(path)) - smooth_image)
  assert err.max() <= tol and err.mean() <= mean_tol
  assert sorted(os.listdir(path.parent)) == [name]


def test_save_is_atomic(tmp_path, smooth_image, monkeypatch):
  path = tmp_path / "keep.png"
  image.save_image(str(path), smooth_image)
  before = path.read_bytes()

  def failing_save(self, fp, *args, **kwargs):
    fp.write(b"partial")
    raise OSError(28, "No space left on device")
  monkeypatch.setattr(Image.Image, "save", failing_save)
  with pytest.raises(ImageError, match="No space left"):
    image.save_image(str(path), 1.0 - smooth_image)
  assert path.read_bytes() == before
  assert os.listdir(tmp_path) == ["keep.png"]       # no temporary file left behind


def test_save_errors(tmp_path, smooth_image):
  (tmp_path / "file").write_text("x")
  with pytest.raises(ImageError):
    image.save_image(str(tmp_path / "file" / "out.png"), smooth_image)
  with pytest.raises(ImageError, match="suffix"):
    image.save_image(str(tmp_path / "out.xyz"), smooth_image)
  with pytest.raises(ImageError, match="NaN"):
    image.save_image(str(tmp_path / "nan.png"), np.full((4, 4, 3), np.nan))
  assert sorted(os.listdir(tmp_path)) == ["file"]


# ------------------------------------------------------------------------------- colour


def test_yuv_roundtrip_and_reference(rng):
  rgb = rng.random((5, 7, 3)).astype(np.float32)
  yuv = image.rgb_to_yuv(rgb)
  np.testing.assert_allclose(image.yuv_to_rgb(yuv), rgb, atol=1e-5)
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  np.testing.assert_allclose(yuv[..., 0], 0.299 * r + 0.587 * g + 0.114 * b, atol=1e-6)
  np.testing.assert_allclose(yuv[..., 1], 0.492 * (b - yuv[..., 0]), atol=1e-3)
  np.testing.assert_allclose(yuv[..., 2], 0.877 * (r - yuv[..., 0]), atol=1e-3)


def test_luminance_transfer_keeps_content_chrominance(smooth_image, stripes_image):
  content = 0.25 + 0.5 * smooth_image                # stays in gamut after the transfer
  stylized = 0.3 + 0.4 * stripes_image
  out = image.luminance_transfer(content, stylized)
  yuv_out, yuv_c, yuv_s = (image.rgb_to_yuv(x) for x in (out, content, stylized))
  np.testing.assert_allclose(yuv_out[..., 1:], yuv_c[..., 1:], atol=1e-5)
  np.testing.assert_allclose(yuv_out[..., 0], yuv_s[..., 0], atol=1e-5)
  out_j = image.luminance_transfer(jnp.asarray(content), jnp.asarray(stylized))
  np.testing.assert_allclose(np.asarray(out_j), out, atol=1e-5)


def test_match_color_matches_mean_and_covariance(rng):
  source = rng.random((32, 32, 3)).astype(np.float32) * 0.3 + 0.1
  mix = np.array([[0.6, 0.2, 0.0], [0.1, 0.3, 0.1], [0.0, 0.1, 0.2]], np.float32)
  target = rng.random((20, 24, 3)).astype(np.float32) @ mix.T + 0.2
  out = image.match_color(source, target)
  flat_o, flat_t = out.reshape(-1, 3), target.reshape(-1, 3)
  np.testing.assert_allclose(flat_o.mean(0), flat_t.mean(0), atol=1e-3)
  np.testing.assert_allclose(np.cov(flat_o.T), np.cov(flat_t.T), atol=2e-3)
  out_j = image.match_color(jnp.asarray(source), jnp.asarray(target))
  assert isinstance(out_j, type(jnp.zeros(1)))
  np.testing.assert_allclose(np.asarray(out_j), out, atol=1e-4)


# ------------------------------------------------------------------------------- samples


def test_samples(monkeypatch):
  for img in (image.sample_content(), image.sample_style()):
    assert img.ndim == 3 and img.shape[-1] == 3 and img.dtype == np.float32
    assert 0.0 <= img.min() and img.max() <= 1.0 and img.std() > 0.05
  monkeypatch.setattr(image, "_skimage_sample", lambda name: None)
  for img in (image.sample_content(), image.sample_style()):
    assert img.shape == (256, 256, 3) and img.std() > 0.05

"""Image I/O, validation, resizing and colour utilities.

Every image that enters jaxstyle passes through `load_image`, so this is the one place that knows
about file formats, Pillow modes and broken files. Images are float32 HWC RGB in [0, 1].
"""
import os
import uuid
import warnings
from typing import Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from jaxstyle.errors import ConfigError, ImageError

DEFAULT_MAX_PIXELS = 100_000_000
_RESAMPLE = Image.Resampling.LANCZOS

# --------------------------------------------------------------------------------------------------
# Loading


def _decode(path: str, max_pixels: Optional[int]) -> Image.Image:
  """Opens, bounds-checks and fully decodes `path`; every failure becomes a one-line ImageError."""
  if not os.path.exists(path):
    raise ImageError(f"image file {path} does not exist")
  if os.path.isdir(path):
    raise ImageError(f"image path {path} is a directory, not a file")
  if os.path.getsize(path) == 0:
    raise ImageError(f"image file {path} is empty")
  try:
    with warnings.catch_warnings():
      # We enforce our own limit below; Pillow's warning would only be noise on stderr.
      warnings.simplefilter("ignore", Image.DecompressionBombWarning)
      with Image.open(path) as im:
        w, h = im.size
        if max_pixels is not None and w * h > max_pixels:
          raise ImageError(f"image {path} is {w}x{h} = {w * h} pixels, above the limit of "
                           f"{max_pixels} (a decompression bomb or simply too large)")
        if w == 0 or h == 0:
          raise ImageError(f"image {path} has zero size ({w}x{h})")
        im.load()
        try:
          # Returns a copy in every case, so the file can be closed here.
          return ImageOps.exif_transpose(im)
        except Exception:  # noqa: BLE001  broken EXIF must not make a readable image unusable
          return im.copy()
  except ImageError:
    raise
  except Image.DecompressionBombError:
    limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
    raise ImageError(f"image {path} is too large to decode safely: above Pillow's decompression "
                     f"bomb limit of {limit} pixels") from None
  except Image.UnidentifiedImageError:
    raise ImageError(f"{path} is not an image file (or its format is not supported)") from None
  except PermissionError:
    raise ImageError(f"image file {path} is not readable (permission denied)") from None
  except Exception as e:  # noqa: BLE001  Pillow raises OSError, SyntaxError, struct.error, ...
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise ImageError(f"image file {path} is corrupt or truncated: {reason}") from None


def _has_alpha(im: Image.Image) -> bool:
  return im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info


def _to_float_rgb(im: Image.Image, path: str, background: float) -> np.ndarray:
  """Converts any Pillow mode to float32 [H, W, 3] in [0, 1], compositing alpha on `background`."""
  mode = im.mode
  if mode.startswith("I;16"):
    gray = np.asarray(im, dtype=np.float32) / 65535.0
    return np.repeat(gray[..., None], 3, axis=-1)
  if mode in ("I", "F"):
    gray = np.asarray(im, dtype=np.float64)
    if not np.all(np.isfinite(gray)):
      raise ImageError(f"image {path} contains NaN or infinite pixel values")
    lo, hi = float(gray.min()), float(gray.max())
    if mode == "F" and lo >= 0.0 and hi <= 1.0:
      pass  # already a [0, 1] float image
    elif lo >= 0.0 and hi <= 255.0 and mode == "I" and hi > 1.0:
      gray = gray / 255.0
    elif lo >= 0.0 and hi <= 65535.0:
      # 16-bit data stored in a wider container (the usual source of mode I/F files).
      gray = gray / 65535.0 if hi > 255.0 else gray / 255.0
    else:
      # No natural range: stretch to [0, 1] rather than clip away the content.
      gray = (gray - lo) / max(hi - lo, 1e-12)
    return np.repeat(gray.astype(np.float32)[..., None], 3, axis=-1)
  if _has_alpha(im):
    rgba = np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0
    alpha = rgba[..., 3:]
    return (rgba[..., :3] * alpha + background * (1.0 - alpha)).astype(np.float32)
  if mode == "1":
    im = im.convert("L")
  try:
    rgb = im.convert("RGB")
  except (ValueError, OSError):
    raise ImageError(f"image {path} has unsupported colour mode {mode}") from None
  return np.asarray(rgb, dtype=np.float32) / 255.0


def load_image(path: str, size: Optional[int] = None, *,
               max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> np.ndarray:
  """Loads any image file as float32 RGB [H, W, 3] in [0, 1].

  Args:
    path: file to read. EXIF orientation is applied; alpha is composited on white; grayscale,
      palette, CMYK, 1-bit, 16-bit and float images are converted with their proper value range.
    size: if given, resize (Lanczos) so that the longer side is `size` pixels.
    max_pixels: refuse images with more pixels than this (decompression bombs). None disables it.

  Returns:
    float32 array [H, W, 3] in [0, 1].

  Raises:
    ImageError: missing, empty, unreadable, non-image, truncated, corrupt or oversized files.
  """
  path = os.fspath(path)
  im = _decode(path, max_pixels)
  img = _to_float_rgb(im, path, background=1.0)
  if size is not None:
    img = resize_long_side(img, size)
  return np.ascontiguousarray(np.clip(img, 0.0, 1.0), dtype=np.float32)


def load_mask(path: str, shape_hw: Tuple[int, int], *,
              max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> np.ndarray:
  """Loads a mask as float32 [H, W] in [0, 1] (white = 1), resized to `shape_hw`.

  Transparent pixels count as black (outside the region), so a cut-out on a transparent canvas
  works.
  """
  path = os.fspath(path)
  im = _decode(path, max_pixels)
  rgb = _to_float_rgb(im, path, background=0.0)
  gray = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
  # Area/bilinear rather than Lanczos: ringing would leak a style a little across a hard mask edge.
  shrink = shape_hw[0] * shape_hw[1] < gray.shape[0] * gray.shape[1]
  filt = Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR
  return np.clip(resize(gray, shape_hw, filt), 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Saving


def _to_uint8(img) -> np.ndarray:
  img = np.asarray(img)
  if img.ndim == 4 and img.shape[0] == 1:
    img = img[0]
  if img.ndim == 3 and img.shape[-1] == 1:
    img = img[..., 0]
  if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[-1] not in (3, 4)):
    raise ImageError(f"cannot save an array of shape {img.shape} as an image")
  if img.dtype == np.uint8:
    return img
  img = img.astype(np.float32)
  if not np.all(np.isfinite(img)):
    raise ImageError("refusing to save an image with NaN or infinite values")
  return np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


def save_image(path: str, img) -> str:
  """Writes `img` ([H, W, 3] float in [0, 1] or uint8) atomically; the format follows the suffix.

  The image is written to a temporary file next to `path` and moved into place with `os.replace`, so
  a crash or a full disk never leaves a half-written file under `path`.

  Returns:
    The absolute path written.
  """
  path = os.path.abspath(os.path.expanduser(os.fspath(path)))
  ext = os.path.splitext(path)[1].lower()
  fmt = Image.registered_extensions().get(ext)
  if fmt is None:
    raise ImageError(f"cannot save {path}: unknown image suffix {ext!r}")
  pil = Image.fromarray(_to_uint8(img))
  if fmt == "JPEG" and pil.mode == "RGBA":
    pil = pil.convert("RGB")
  parent = os.path.dirname(path)
  tmp = os.path.join(parent, f".{os.path.basename(path)}.{uuid.uuid4().hex[:8]}.tmp")
  try:
    os.makedirs(parent, exist_ok=True)
    # os.open honours the umask, unlike tempfile's 0600, so the result has normal permissions.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    with os.fdopen(fd, "wb") as f:
      pil.save(f, format=fmt, **({"quality": 95, "subsampling": 0} if fmt == "JPEG" else {}))
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except OSError as e:
    raise ImageError(f"cannot write {path}: {e.strerror or e}") from None
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return path


# --------------------------------------------------------------------------------------------------
# Geometry


def resize(img, hw: Tuple[int, int], resample=_RESAMPLE) -> np.ndarray:
  """Resizes [H, W] or [H, W, C] float `img` to `hw` with Lanczos (antialiased when shrinking)."""
  img = np.asarray(img, dtype=np.float32)
  h, w = int(hw[0]), int(hw[1])
  if h <= 0 or w <= 0:
    raise ConfigError(f"cannot resize to {h}x{w}")
  if img.shape[:2] == (h, w):
    return img.copy()
  # Per-channel mode-F resizing keeps full float precision (16-bit sources, masks).
  chans = img[..., None] if img.ndim == 2 else img
  out = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(chans[..., c]), mode="F")
                             .resize((w, h), resample)) for c in range(chans.shape[-1])], axis=-1)
  out = out[..., 0] if img.ndim == 2 else out
  if resample == _RESAMPLE:
    # Lanczos rings around edges; keep the [0, 1] range where the input was in it.
    out = np.clip(out, min(0.0, float(img.min())), max(1.0, float(img.max())))
  return out.astype(np.float32)


def long_side_shape(hw: Tuple[int, int], size: int) -> Tuple[int, int]:
  """The (h, w) with longer side `size` and the aspect ratio of `hw` (each side at least 1)."""
  if size is None or size <= 0:
    raise ConfigError(f"image size must be positive, got {size}")
  h, w = hw
  scale = size / max(h, w)
  return max(1, int(round(h * scale))), max(1, int(round(w * scale)))


def resize_long_side(img, size: int) -> np.ndarray:
  """Resizes so that the longer side is `size` pixels, keeping the aspect ratio."""
  img = np.asarray(img, dtype=np.float32)
  return resize(img, long_side_shape(img.shape[:2], size))


def center_crop(img, hw) -> np.ndarray:
  """Crops the central `hw` (an int for a square) window; raises if the image is smaller."""
  img = np.asarray(img)
  h, w = (hw, hw) if isinstance(hw, int) else hw
  if img.shape[0] < h or img.shape[1] < w:
    raise ImageError(f"cannot crop {h}x{w} from an image of {img.shape[0]}x{img.shape[1]}")
  top, left = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
  return img[top:top + h, left:left + w]


def make_grid(images: Sequence[np.ndarray], height: Optional[int] = None, *,
              labels: Optional[Sequence[str]] = None, pad: int = 4) -> np.ndarray:
  """Places images side by side, each resized to `height` (default: the first one's), on white."""
  if not images:
    raise ImageError("make_grid needs at least one image")
  images = [np.asarray(i, np.float32) for i in images]
  images = [np.repeat(i[..., None], 3, -1) if i.ndim == 2 else i[..., :3] for i in images]
  height = height or images[0].shape[0]
  panels = [resize(i, (height, max(1, round(i.shape[1] * height / i.shape[0])))) for i in images]
  width = sum(p.shape[1] for p in panels) + pad * (len(panels) - 1)
  grid = np.ones((height, width, 3), np.float32)
  x = 0
  for p in panels:
    grid[:, x:x + p.shape[1]] = p
    x += p.shape[1] + pad
  if labels:
    pil = Image.fromarray(_to_uint8(grid))
    draw = ImageDraw.Draw(pil)
    x = 0
    for p, label in zip(panels, labels):
      draw.text((x + 3, 3), str(label), fill=(255, 255, 255), stroke_width=1, stroke_fill=(0, 0, 0))
      x += p.shape[1] + pad
    grid = np.asarray(pil, np.float32) / 255.0
  return grid


# --------------------------------------------------------------------------------------------------
# Colour (NumPy in, NumPy out; JAX in, JAX out)

# ITU-R BT.601 analogue YUV.
_RGB2YUV = np.array([[0.299, 0.587, 0.114],
                     [-0.14713, -0.28886, 0.436],
                     [0.615, -0.51499, -0.10001]], np.float32)
_YUV2RGB = np.linalg.inv(_RGB2YUV).astype(np.float32)


def _xp(x):
  if isinstance(x, np.ndarray) or np.isscalar(x):
    return np
  import jax.numpy as jnp  # noqa: PLC0415  only when a JAX array is passed
  return jnp


def rgb_to_yuv(rgb):
  """[..., 3] RGB -> [..., 3] YUV (BT.601); Y in [0, 1]."""
  return rgb @ _RGB2YUV.T


def yuv_to_rgb(yuv):
  """[..., 3] YUV -> [..., 3] RGB (not clipped)."""
  return yuv @ _YUV2RGB.T


def luminance_transfer(content, stylized):
  """Keeps the stylized luminance and the content's chrominance (Gatys et al. 2017, "colour
  preservation" by luminance-only transfer). Both [..., H, W, 3] in [0, 1] of the same shape."""
  xp = _xp(stylized)
  if content.shape != stylized.shape:
    raise ImageError(
        f"luminance_transfer needs equal shapes, got {content.shape} and {stylized.shape}")
  y = rgb_to_yuv(stylized)[..., :1]
  uv = rgb_to_yuv(content)[..., 1:]
  return xp.clip(yuv_to_rgb(xp.concatenate([y, uv], axis=-1)), 0.0, 1.0)


def _sqrtm(cov, xp, inverse=False, eps=1e-5):
  vals, vecs = xp.linalg.eigh(cov)
  vals = xp.maximum(vals, 0.0) + eps
  scale = vals ** (-0.5 if inverse else 0.5)
  return (vecs * scale[None, :]) @ vecs.T


def match_color(source, target, eps: float = 1e-5):
  """Recolours `source` so its pixel mean and covariance match `target`'s.

  The linear colour transfer used for colour preservation by Gatys et al. 2017 ("Controlling
  perceptual factors", applied to the style image) and by AdaIN's `preserve_color` (CORAL).

  Args:
    source: [H, W, 3] image whose colours change.
    target: [h, w, 3] image providing the colour statistics.

  Returns:
    [H, W, 3] in [0, 1].
  """
  xp = _xp(source)
  src = source.reshape(-1, 3).astype(xp.float32)
  tgt = target.reshape(-1, 3).astype(xp.float32)
  mu_s, mu_t = src.mean(0), tgt.mean(0)
  cov_s = (src - mu_s).T @ (src - mu_s) / src.shape[0]
  cov_t = (tgt - mu_t).T @ (tgt - mu_t) / tgt.shape[0]
  transform = _sqrtm(cov_t, xp, eps=eps) @ _sqrtm(cov_s, xp, inverse=True, eps=eps)
  out = (src - mu_s) @ transform.T + mu_t
  return xp.clip(out.reshape(source.shape), 0.0, 1.0).astype(xp.float32)


# --------------------------------------------------------------------------------------------------
# Sample images


def _procedural(kind: str, size: int = 256) -> np.ndarray:
  y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
  if kind == "content":
    sky = np.stack([0.4 + 0.3 * y, 0.6 + 0.2 * y, 0.9 - 0.2 * y], -1)
    hill = (y > 0.6 + 0.1 * np.sin(6 * x))[..., None]
    sun = (((x - 0.7) ** 2 + (y - 0.25) ** 2) < 0.01)[..., None]
    img = np.where(hill, np.array([0.2, 0.5, 0.2]), sky)
    return np.where(sun, np.array([1.0, 0.85, 0.3]), img).astype(np.float32)
  r = np.hypot(x - 0.5, y - 0.5)
  swirl = np.sin(40 * r + 8 * np.arctan2(y - 0.5, x - 0.5))
  stripes = np.sin(25 * (x + y))
  return np.clip(np.stack([0.5 + 0.5 * swirl, 0.5 + 0.4 * stripes * swirl, 0.6 - 0.4 * stripes],
                          -1), 0, 1).astype(np.float32)


def _skimage_sample(name: str) -> Optional[np.ndarray]:
  try:
    from skimage import data  # noqa: PLC0415  optional dependency
    img = getattr(data, name)()
  except Exception:  # noqa: BLE001  missing package or data file: fall back to a procedural image
    return None
  return np.asarray(img, np.float32)[..., :3] / 255.0


def sample_content() -> np.ndarray:
  """A default content photo (scikit-image's astronaut); a procedural landscape without skimage."""
  img = _skimage_sample("astronaut")
  return img if img is not None else _procedural("content")


def sample_style() -> np.ndarray:
  """A default, strongly textured style image (a stained tissue micrograph from scikit-image), or a
  procedural swirl pattern without skimage."""
  img = _skimage_sample("immunohistochemistry")
  return img if img is not None else _procedural("style")

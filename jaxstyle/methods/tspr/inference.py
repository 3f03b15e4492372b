"""TSPR at inference: zero-shot stylization of any content image with any style image(s).

As the reference's `test.py`: BatchNorm running statistics and no dropout, the content reflection-
padded by `pad * max(1, size // 256)` pixels and cropped back. Several style images form one joint
peer graph (their latent positions are pooled), which is what the reference's layer does with a
batch of peers.
"""
import functools
from typing import Any, Callable, Dict, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxstyle import api
from jaxstyle import image as image_lib
from jaxstyle.errors import CheckpointError, ConfigError
from jaxstyle.methods.tspr.config import TSPRConfig, validate
from jaxstyle.methods.tspr.model import Generator
from jaxstyle.methods.tspr.trainer import build_models, generator_params
from jaxstyle.train import checkpoint

# Settings that may change at inference; the rest define the trained architecture.
INFERENCE_SETTINGS = ("stylize_content", "stylize_style", "pad", "knn", "knn_chunk")


def config_from_dict(values: Dict[str, Any]) -> TSPRConfig:
  """A TSPRConfig from `config.json` (unknown keys, e.g. 'image_size', ignored)."""
  return api.config_from_dict(TSPRConfig, values, strict=False)


def load(workdir: str) -> Tuple[Generator, Dict[str, Any], TSPRConfig]:
  """Loads a trained TSPR generator: `(model, variables, config)`.

  `variables` = {'params': generator params, 'batch_stats': attention BatchNorm statistics}.
  """
  saved = checkpoint.load_config(workdir)
  if saved.get("method") not in (None, "tspr"):
    raise CheckpointError(f"{workdir} holds a {saved.get('method')} model, not tspr")
  config = config_from_dict(saved.get("config", {}))
  params, extra = checkpoint.load_params(workdir, with_extra=True)
  if not isinstance(params, dict) or not {"aux", "main"} <= set(params):
    raise CheckpointError(f"{workdir} does not hold TSPR parameters")
  variables = {"params": generator_params(params), "batch_stats": extra["batch_stats"]}
  return build_models(config)[0], variables, config


@functools.partial(jax.jit, static_argnames=("model", "recombine_content", "recombine_style"))
def _stylize(model, variables, content, peers, recombine_content, recombine_style):

  def run(m: Generator):
    z = m.encode(content)
    zs = [m.encode(p) for p in peers]
    joint = {k: jnp.concatenate([q[k].reshape(1, 1, -1, q[k].shape[-1]) for q in zs], axis=2)
             for k in ("content", "style")}
    return m.decode(m.recombine(z, joint, recombine_content=recombine_content,
                                recombine_style=recombine_style))
  return model.apply(variables, method=run)


def stylize(model: Generator, variables: Dict[str, Any], content: np.ndarray,
            styles: Sequence[np.ndarray], *, recombine_content: bool = True,
            recombine_style: bool = True, pad: int = 8) -> np.ndarray:
  """Stylizes one image.

  Args:
    model, variables: from `load`.
    content: `[H, W, 3]` in [0, 1].
    styles: one or more `[h, w, 3]` style images in [0, 1] (pooled into one peer graph).
    recombine_content: stage 2 on (the reference's `cont_transf`).
    recombine_style: stage 1 on (`style_transf`).
    pad: reflection padding at 256 px, scaled by `size // 256`.

  Returns:
    `[H, W, 3]` float32 in [0, 1].
  """
  h, w = content.shape[:2]
  p = pad * max(1, max(h, w) // 256)
  # Pad to a multiple of 4 too (two stride-2 stages), so the output crops back to H x W exactly.
  extra_h, extra_w = (-(h + 2 * p)) % 4, (-(w + 2 * p)) % 4
  x = np.pad(content, ((p, p + extra_h), (p, p + extra_w), (0, 0)), mode="reflect")
  peers = tuple(jnp.asarray(s, jnp.float32)[None] * 2.0 - 1.0 for s in styles)
  out = _stylize(model, variables, jnp.asarray(x, jnp.float32)[None] * 2.0 - 1.0, peers,
                 recombine_content, recombine_style)
  out = (np.asarray(out[0], np.float32) + 1.0) * 0.5
  return np.clip(out[p:p + h, p:p + w], 0.0, 1.0)


def make_stylizer(request: api.StylizeRequest) -> Callable[[np.ndarray], np.ndarray]:
  """`launch/stylize.py --method=tspr --checkpoint=WORKDIR`: checks the request and loads the
  model once; the result stylizes any content image."""
  if request.checkpoint is None:
    raise ConfigError("--method=tspr needs --checkpoint=<training workdir>")
  if request.content is None:
    raise ConfigError("--method=tspr needs a --content image")
  if request.masks:
    raise ConfigError("tspr has no spatial control: drop --mask")
  if request.style_weights is not None and len(set(request.style_weights)) > 1:
    raise ConfigError("tspr pools several styles into one peer graph and cannot weight them: "
                      "drop --style_weights")
  if request.alpha != 1.0:
    raise ConfigError("tspr has no --alpha; use --set stylize_content=false or stylize_style=false")
  if request.style_index:
    raise ConfigError("tspr is zero-shot: give --style images, not --style_index")
  unknown = sorted(set(request.overrides) - set(INFERENCE_SETTINGS))
  if unknown:
    raise ConfigError(f"tspr setting(s) {', '.join(unknown)} are fixed by the checkpoint; at "
                      f"inference only {', '.join(INFERENCE_SETTINGS)} can be set")
  model, variables, config = load(request.checkpoint)
  config = validate(api.apply_overrides(config, request.overrides))
  if config.knn != model.knn or config.knn_chunk != model.knn_chunk:
    model = model.clone(knn=config.knn, knn_chunk=config.knn_chunk)
  for s in request.styles:
    if (s.shape[0] // 4) * (s.shape[1] // 4) < config.knn:
      raise ConfigError(f"style image {s.shape[1]}x{s.shape[0]} is too small for knn={config.knn}")

  def stylizer(content01: np.ndarray) -> np.ndarray:
    styles = list(request.styles)
    if request.preserve_color == "histogram":  # Gatys et al. 2017: style recoloured to content
      styles = [image_lib.match_color(s, content01) for s in styles]
    out = stylize(model, variables, content01, styles, recombine_content=config.stylize_content,
                  recombine_style=config.stylize_style, pad=config.pad)
    if request.preserve_color == "luminance":
      out = image_lib.luminance_transfer(content01, out)
    return out
  return stylizer


def run_stylize(request: api.StylizeRequest) -> np.ndarray:
  """`make_stylizer(request)` applied to `request.content`."""
  return make_stylizer(request)(request.content)

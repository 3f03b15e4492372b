"""The perceptual loss shared by the feed-forward methods (Johnson et al. 2016, arXiv 1603.08155, Eq. 5;
also MSG-Net and StyleBank): VGG feature reconstruction + Gram-matrix style reconstruction + total
variation.

`loss_net` is anything with `features(x01, layers) -> {name: [B, h, w, C]}`, normally a
`jaxstyle.vgg.LossNet`; pass it into jitted functions as an argument (it is a pytree).

Per-layer normalisation (optional, as Gatys' `normalize_layers`): raw loss magnitudes differ by
orders of magnitude between layers and weight sets (the HED VGG16's Caffe 0-255 features with
Gram / (C*H*W) give ~7.5e3 at relu1_2 and ~2e-4 at relu4_3), so with raw weights only the shallowest
style layer trains. Dividing each layer's loss by its target's mean square (`style_scales` of the
style Grams; `normalize_content` for the content features) starts every layer near 1, which makes
the weights relative and portable across loss networks.
"""
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp

from jaxstyle.losses.basic import content_loss, total_variation
from jaxstyle.losses.style import gram_loss, gram_matrix

Array = jax.Array


def _features(loss_net: Any, x01: Array, layers: Sequence[str], dtype) -> Dict[str, Array]:
  if dtype is None:
    return loss_net.features(x01, tuple(layers))
  return loss_net.features(x01, tuple(layers), dtype=dtype)


def style_targets(loss_net: Any, styles01: Array, layers: Sequence[str],
                  normalize: Optional[str] = "chw") -> Dict[str, Array]:
  """Gram matrices of the style images, the fixed targets of `perceptual_loss`.

  Args:
    loss_net: object with `features(x01, layers)` (a `jaxstyle.vgg.LossNet`).
    styles01: `[S, H, W, 3]` style images in [0, 1] (or one `[H, W, 3]` image, treated as S = 1).
    layers: style layer names, e.g. ('relu1_2', 'relu2_2', 'relu3_3', 'relu4_3').
    normalize: Gram normalisation (see `gram_matrix`); use the same value in `perceptual_loss`.

  Returns:
    {layer: `[S, C, C]` float32}, gradients stopped.
  """
  styles01 = jnp.asarray(styles01)
  if styles01.ndim == 3:
    styles01 = styles01[None]
  feats = loss_net.features(styles01, tuple(layers))
  return {name: jax.lax.stop_gradient(gram_matrix(feats[name], normalize)) for name in layers}


def style_scales(style_grams: Mapping[str, Array], eps: float = 1e-12) -> Dict[str, Array]:
  """Per-style, per-layer divisors of the style loss: the mean square of each target Gram.

  Args:
    style_grams: {layer: `[S, C, C]`} from `style_targets`.
    eps: lower bound, so an all-zero Gram (a black style) does not divide by zero.

  Returns:
    {layer: `[S]` float32}, gradients stopped; pass as `perceptual_loss(style_scales=...)`, indexed
    like the Grams (one row per style, or per sample).
  """
  return {name: jax.lax.stop_gradient(
      jnp.maximum(jnp.mean(jnp.square(jnp.asarray(g, jnp.float32)), axis=(-2, -1)), eps))
          for name, g in style_grams.items()}


def _scaled_gram_loss(f: Array, target: Array, normalize: Optional[str],
                      scale: Optional[Array]) -> Array:
  """`gram_loss`, each sample's error divided by its `scale` (`[B|1]` or scalar) when given."""
  if scale is None:
    return gram_loss(f, target, normalize)
  err = jnp.square(gram_matrix(f, normalize) - jnp.asarray(target, jnp.float32))
  per_sample = jnp.mean(err, axis=(1, 2))
  scale = jnp.broadcast_to(jnp.asarray(scale, jnp.float32).reshape(-1), per_sample.shape)
  return jnp.mean(per_sample / scale)


def _layer_weights(layers: Sequence[str],
                   layer_weights: Optional[Union[Mapping[str, float], Sequence[float]]]):
  if layer_weights is None:
    return {name: 1.0 for name in layers}
  if isinstance(layer_weights, Mapping):
    missing = [name for name in layers if name not in layer_weights]
    if missing:
      raise ValueError(f"layer_weights has no weight for style layer(s) {', '.join(missing)}")
    return {name: float(layer_weights[name]) for name in layers}
  if len(layer_weights) != len(layers):
    raise ValueError(f"{len(layer_weights)} layer weights for {len(layers)} style layers")
  return dict(zip(layers, map(float, layer_weights)))


def perceptual_loss(loss_net: Any, output01: Array, content01: Optional[Array],
                    style_grams: Mapping[str, Array], content_layers: Sequence[str],
                    style_layers: Sequence[str], content_weight: float, style_weight: float,
                    tv_weight: float,
                    layer_weights: Optional[Union[Mapping[str, float], Sequence[float]]] = None, *,
                    normalize: Optional[str] = "chw", tv_scale: float = 255.0,
                    dtype: Optional[Any] = None,
                    style_scales: Optional[Mapping[str, Array]] = None,
                    normalize_content: bool = False) -> Tuple[Array, Dict[str, Array]]:
  """Johnson et al.'s perceptual loss of stylised images.

    loss = content_weight * sum_l mse(phi_l(out), phi_l(content)) / n_l      (content layers)
         + style_weight * sum_l w_l * mse(G_l(out), style_grams[l]) / s_l    (style layers)
         + tv_weight * TV(out * tv_scale)

  with n_l = mean(phi_l(content)^2) under `normalize_content` (else 1) and s_l = `style_scales[l]`
  (else 1).

  Args:
    loss_net: object with `features(x01, layers)` (a `jaxstyle.vgg.LossNet`).
    output01: `[B, H, W, 3]` stylised images in [0, 1] (gradients flow through them).
    content01: `[B, H, W, 3]` content images in [0, 1] (targets; gradients stopped), or None when
      `content_weight` is 0 (texture synthesis).
    style_grams: {layer: `[B|1, C, C]`} from `style_targets` (one style for the batch, or one per
      sample).
    content_layers: content layer names.
    style_layers: style layer names (keys of `style_grams`).
    content_weight: weight of the summed content losses.
    style_weight: weight of the summed style losses.
    tv_weight: weight of the total variation.
    layer_weights: per-style-layer weights (mapping or sequence aligned with `style_layers`); default 1.
    normalize: Gram normalisation; must match the one `style_grams` was built with.
    tv_scale: pixel scale for the TV term. TV is the batch-averaged per-image *sum* of squared
      neighbour differences of `output01 * tv_scale`; 255 puts it on the 0-255 scale of the Caffe
      models' TV strengths (fast-neural-style's `TotalVariation` is half of this).
    dtype: optional VGG compute dtype (mixed precision); statistics stay float32.
    style_scales: optional {layer: `[B|1]`} style-loss divisors from `style_scales` (rows aligned
      with `style_grams`); None = raw losses.
    normalize_content: divide each content layer's MSE by its target features' mean square (over
      the whole batch, gradients stopped).

  Returns:
    `(loss, parts)`: scalar float32 loss and {'content', 'style', 'tv'}, each already weighted, so
    they sum to `loss`.
  """
  content_layers, style_layers = tuple(content_layers), tuple(style_layers)
  weights = _layer_weights(style_layers, layer_weights)
  missing = [name for name in style_layers if name not in style_grams]
  if missing:
    raise ValueError(f"style_grams has no target for style layer(s) {', '.join(missing)}")
  if style_scales is not None:
    missing = [name for name in style_layers if name not in style_scales]
    if missing:
      raise ValueError(f"style_scales has no divisor for style layer(s) {', '.join(missing)}")
  use_content = bool(content_layers) and content01 is not None and content_weight != 0
  wanted = tuple(dict.fromkeys(style_layers + (content_layers if use_content else ())))
  zero = jnp.zeros((), jnp.float32)

  feats = _features(loss_net, output01, wanted, dtype) if wanted else {}
  c_loss = zero
  if use_content:
    targets = _features(loss_net, jax.lax.stop_gradient(content01), content_layers, dtype)
    for name in content_layers:
      target = jax.lax.stop_gradient(targets[name])
      layer_loss = content_loss(feats[name], target)
      if normalize_content:
        layer_loss /= jnp.maximum(jnp.mean(jnp.square(target.astype(jnp.float32))), 1e-12)
      c_loss += layer_loss
  s_loss = zero
  for name in style_layers:
    scale = None if style_scales is None else style_scales[name]
    s_loss += weights[name] * _scaled_gram_loss(feats[name], style_grams[name], normalize, scale)
  tv = total_variation(output01 * tv_scale, kind="l2", reduction="sum") if tv_weight else zero

  parts = {"content": content_weight * c_loss, "style": style_weight * s_loss, "tv": tv_weight * tv}
  return parts["content"] + parts["style"] + parts["tv"], parts

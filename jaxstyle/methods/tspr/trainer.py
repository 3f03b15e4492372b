"""TSPR training: auxiliary, main and discriminator phases as per-device SPMD programs.

One iteration of the reference (`GANAuxModel.optimize_parameters`) runs one forward pass and steps
three Adam optimisers from it, each on its own parameter group with the others frozen:

  auxiliary  encoder + auxiliary decoder: metric learning on style codes, content-latent and latent
             cycle SmoothL1 losses, auxiliary identity MSE.
  main       peer regularization + main decoder (encoder frozen): relativistic-average LSGAN,
             identity MSE x25, latent transfer SmoothL1.
  disc       the pair discriminator on an image-history pool of (real, generated, paired) triples.

All three gradients are taken at the iteration's starting parameters, as in the reference. Each phase
is a `jax.shard_map` over the 'data' mesh axis: every device runs the phase on its slice of the batch,
gradients and metrics are averaged with `lax.pmean`, and BatchNorm statistics of the attention MLP are
synced with `pmean` (flax `axis_name`). `check_vma=False` gives the classic data-parallel semantics
(local gradients, then `pmean`; the transposes of `pmean`/`all_gather` route cross-device terms
back), which the 8-device test checks against one device.

Randomness (attention dropout, discriminator input noise) is drawn per *sample* from
`fold_in(rng, global_index)`, with the global index `axis_index('data') * local_batch + i`; the
result is then the same for any split of the global batch over devices.
"""
import dataclasses
import functools
from typing import Any, Dict, Tuple

import jax
import jax.numpy as jnp
import optax
from jax import lax
from jax.sharding import PartitionSpec as P

from jaxstyle.methods.tspr import losses
from jaxstyle.methods.tspr import pool
from jaxstyle.methods.tspr.config import TSPRConfig
from jaxstyle.methods.tspr.model import Discriminator, Generator, latent
from jaxstyle.train.state import TrainState

AXIS = "data"  # == jaxstyle.train.sharding.DATA
sg = lax.stop_gradient
IMAGE_KEYS = ("content", "content_peer", "style", "style_peer")


def build_models(config: TSPRConfig, dtype=jnp.float32, axis_name=None) -> Tuple[Generator, Discriminator]:
  """The generator (BatchNorm synced over `axis_name` in training) and the discriminator."""
  gen = Generator(ngf=config.ngf, n_blocks=config.n_blocks, global_style=config.global_style,
                  knn=config.knn, bidirectional=config.peer_reg == "bidir",
                  att_dropout=config.att_dropout, knn_chunk=config.knn_chunk, axis_name=axis_name,
                  dtype=dtype)
  return gen, Discriminator(ndf=config.ndf, noise=config.d_noise, dtype=dtype)


def generator_params(params: Dict[str, Any]) -> Dict[str, Any]:
  """The generator's parameter tree from the train state's groups {'aux', 'main', 'disc'}."""
  return {**params["aux"], **params["main"]}


def lr_schedule(config: TSPRConfig, global_batch: int, lr: float):
  """Constant for `niter` epochs, then linear decay over `niter_decay` epochs (CycleGAN 'lambda').

  During 0-based epoch e the factor is `1 - max(0, e + 1 - niter) / (niter_decay + 1)`.
  """
  steps_per_epoch = max(1, config.epoch_size // global_batch)

  def schedule(count):
    epoch = count // steps_per_epoch
    decay = jnp.maximum(0, epoch + 1 - config.niter) / (config.niter_decay + 1)
    return lr * jnp.maximum(1.0 - decay, 0.0)
  return schedule


def _sample_keys(rng: jax.Array, local_batch: int) -> jax.Array:
  start = lax.axis_index(AXIS) * local_batch
  return jax.vmap(lambda i: jax.random.fold_in(rng, i))(start + jnp.arange(local_batch))


def _purpose(keys: jax.Array, n: int) -> jax.Array:
  return jax.vmap(lambda k: jax.random.fold_in(k, n))(keys)


def _pmean(tree):
  return lax.pmean(tree, AXIS)


# --- phases (per device) --------------------------------------------------------------------------
def _stack_apply(fn, *xs):
  """Runs a per-sample network once on the stacked inputs and splits the result back.

  Encoder, decoders and discriminator normalise per sample (instance norm), so stacking is exact;
  one call instead of several keeps the compiled program small.
  """
  out = fn(jnp.concatenate(xs, axis=0))
  split = lambda y: jnp.split(y, len(xs), axis=0)
  if isinstance(out, dict):
    parts = {k: split(v) for k, v in out.items()}
    return [{k: parts[k][i] for k in out} for i in range(len(xs))]
  return split(out)


def _disc_scores(disc, d_params, pairs, keys):
  """Discriminator scores of several (image, paired) lists in one call; noise keys per pair."""
  images = jnp.concatenate([p[0] for p in pairs], axis=0)
  paired = jnp.concatenate([p[1] for p in pairs], axis=0)
  noise = jnp.concatenate([_purpose(keys, 1 + i) for i in range(len(pairs))], axis=0)
  return jnp.split(disc.apply({"params": d_params}, images, paired, noise), len(pairs), axis=0)


def main_phase(gen, disc, config, params, batch_stats, x, rng):
  """Peer regularization + main decoder step. Returns (grads, metrics, batch_stats, fake_b, rec_a)."""
  keys = _sample_keys(rng, x["content"].shape[0])
  frozen_aux, d_params = sg(params["aux"]), sg(params["disc"])

  def loss_fn(main_params):
    gp = {**frozen_aux, **main_params}
    enc = lambda img: gen.apply({"params": gp}, img, method="encode")
    dec = lambda z: gen.apply({"params": gp}, z, method="decode")
    f_src, f_tgt = _stack_apply(enc, x["content"], x["style_peer"])
    f = {"inp_src": sg(f_src), "dst_tgt": sg(f_tgt)}
    z, new_vars = gen.apply({"params": gp, "batch_stats": batch_stats}, f["inp_src"], f["dst_tgt"],
                            train=True, dropout_keys=_purpose(keys, 0), method="recombine",
                            mutable=["batch_stats"])
    fake_b, rec_a, rec_style = _stack_apply(dec, z, latent(f["inp_src"]), latent(f["dst_tgt"]))
    f["rec"] = enc(fake_b)
    real_a, fake_a, real_b, fake_b_score = _disc_scores(
        disc, d_params, [(x["content"], x["content_peer"]), (rec_a, x["content_peer"]),
                         (x["style"], x["style_peer"]), (fake_b, x["style_peer"])], keys)
    gan = 0.5 * (jnp.mean(losses.pair_ralsgan(real_a, fake_a, False))
                 + jnp.mean(losses.pair_ralsgan(real_b, fake_b_score, False)))
    idt = losses.identity_loss(rec_a, x["content"], rec_style, x["style_peer"])
    transf = losses.transfer_loss(f)
    total = config.lambda_gen * gan + config.lambda_idt * idt + config.lambda_transf * transf
    metrics = {"gen": gan, "idt": idt, "transf": transf, "main": total}
    return total, (metrics, new_vars["batch_stats"], fake_b, rec_a)

  grads, (metrics, new_stats, fake_b, rec_a) = jax.grad(loss_fn, has_aux=True)(params["main"])
  return _pmean(grads), _pmean(metrics), new_stats, sg(fake_b), sg(rec_a)


def aux_phase(gen, config, params, x, fake_b, rec_a):
  """Encoder + auxiliary decoder step. Returns (grads, metrics)."""
  frozen_main = sg(params["main"])
  names = ("inp_src", "inp_tgt", "dst_src", "dst_tgt", "rec", "rec_id")

  def loss_fn(aux_params):
    gp = {**aux_params, **frozen_main}
    enc = lambda img: gen.apply({"params": gp}, img, method="encode")
    dec_aux = lambda z: gen.apply({"params": gp}, z, method="decode_aux")
    f = dict(zip(names, _stack_apply(enc, x["content"], x["style"], x["content_peer"],
                                     x["style_peer"], fake_b, rec_a)))
    rec_a_aux, rec_style_aux = _stack_apply(dec_aux, latent(f["inp_src"]), latent(f["dst_tgt"]))
    f["rec_id_aux"], f["rec_style_id_aux"] = _stack_apply(enc, rec_a_aux, rec_style_aux)
    z_cont = losses.content_latent_loss(f)
    z_style = losses.style_metric_loss(f, config.ml_margin, AXIS)
    cycle = losses.cycle_aux_loss(f)
    idt_aux = losses.identity_loss(rec_a_aux, x["content"], rec_style_aux, x["style_peer"])
    total = (config.lambda_cont * z_cont + config.lambda_style * z_style
             + config.lambda_cycle_aux * cycle + config.lambda_idt_aux * idt_aux)
    return total, {"z_cont": z_cont, "z_style": z_style, "cycle_aux": cycle, "idt_aux": idt_aux,
                   "aux": total}

  grads, metrics = jax.grad(loss_fn, has_aux=True)(params["aux"])
  return _pmean(grads), _pmean(metrics)


def disc_phase(disc, config, d_params, pooled_a, pooled_b, rng):
  """Discriminator step on pooled (real, generated, paired) triples `[b, H, W, 9]`. -> (grads, metrics)."""
  keys = _sample_keys(rng, pooled_a.shape[0])
  (real_a, fake_a, paired_a), (real_b, fake_b, paired_b) = (
      jnp.split(t, 3, axis=-1) for t in (pooled_a, pooled_b))

  def loss_fn(dp):
    scores = _disc_scores(disc, dp, [(real_a, paired_a), (fake_a, paired_a), (real_b, paired_b),
                                     (fake_b, paired_b)], keys)
    loss = config.lambda_disc * 0.5 * (jnp.mean(losses.pair_ralsgan(scores[0], scores[1], True))
                                       + jnp.mean(losses.pair_ralsgan(scores[2], scores[3], True)))
    return loss, {"disc": loss}

  grads, metrics = jax.grad(loss_fn, has_aux=True)(d_params)
  return _pmean(grads), _pmean(metrics)


# --- the trainer ------------------------------------------------------------------------------------
class TSPRTrainer:
  """Implements `jaxstyle.train.api.Trainer` (+ `make_step`, `config_dict`) for TSPR."""

  def __init__(self, config: TSPRConfig, *, global_batch: int, image_size: int,
               lr: float = None, dtype=jnp.float32):
    self.config = config
    self.image_size = image_size
    self.global_batch = global_batch
    self.lr = config.lr if lr is None else lr
    self.gen, self.disc = build_models(config, dtype, axis_name=AXIS)
    self.gen_infer, _ = build_models(config, dtype, axis_name=None)

  def config_dict(self) -> Dict[str, Any]:
    return {**dataclasses.asdict(self.config), "image_size": self.image_size}

  def init(self, rng: jax.Array, batch: Dict[str, Any]) -> TrainState:
    s = batch["content"].shape[1]
    x = jnp.zeros((1, s, s, 3), jnp.float32)
    k_gen, k_disc = jax.random.split(rng)
    gvars = self.gen_infer.init(k_gen, x, x)
    gp = dict(gvars["params"])
    if self.config.main_from_aux:
      gp["decoder"] = gp["decoder_aux"]
    params = {"aux": {"encoder": gp["encoder"], "decoder_aux": gp["decoder_aux"]},
              "main": {"peer_reg": gp["peer_reg"], "decoder": gp["decoder"]},
              "disc": self.disc.init(k_disc, x, x)["params"]}
    sched = lr_schedule(self.config, self.global_batch, self.lr)
    adam = lambda: optax.adam(sched, b1=self.config.beta1, b2=self.config.beta2)
    extra = {"batch_stats": gvars["batch_stats"],
             "pool_a": pool.init(self.config.pool_size, (s, s, 9)),
             "pool_b": pool.init(self.config.pool_size, (s, s, 9))}
    return TrainState.create(params, {"aux": adam(), "main": adam(), "disc": adam()}, extra=extra)

  def make_step(self, mesh):
    """The SPMD train step over `mesh`'s 'data' axis (called by the shared loop)."""
    shard = functools.partial(jax.shard_map, mesh=mesh, check_vma=False)
    rep, dat = P(), P(AXIS)
    main = shard(functools.partial(main_phase, self.gen, self.disc, self.config),
                 in_specs=(rep, rep, dat, rep), out_specs=(rep, rep, rep, dat, dat))
    aux = shard(functools.partial(aux_phase, self.gen, self.config),
                in_specs=(rep, dat, dat, dat), out_specs=(rep, rep))
    disc = shard(functools.partial(disc_phase, self.disc, self.config),
                 in_specs=(rep, dat, dat, rep), out_specs=(rep, rep))

    def step(state: TrainState, batch, rng):
      x = {k: batch[k].astype(jnp.float32) * 2.0 - 1.0 for k in IMAGE_KEYS}
      r_main, r_pool, r_disc = jax.random.split(rng, 3)
      extra = dict(state.extra)
      g_main, m_main, extra["batch_stats"], fake_b, rec_a = main(
          state.params, extra["batch_stats"], x, r_main)
      g_aux, m_aux = aux(state.params, x, fake_b, rec_a)
      extra["pool_a"], pooled_a = pool.query(
          extra["pool_a"], jnp.concatenate([x["content"], rec_a, x["content_peer"]], -1),
          jax.random.fold_in(r_pool, 0))
      extra["pool_b"], pooled_b = pool.query(
          extra["pool_b"], jnp.concatenate([x["style"], fake_b, x["style_peer"]], -1),
          jax.random.fold_in(r_pool, 1))
      g_disc, m_disc = disc(state.params["disc"], pooled_a, pooled_b, r_disc)
      new = state.apply_gradients({"aux": g_aux, "main": g_main, "disc": g_disc}, extra=extra)
      metrics = {**m_main, **m_aux, **m_disc, "loss": m_aux["aux"] + m_main["main"],
                 "lr": lr_schedule(self.config, self.global_batch, self.lr)(state.step)}
      return new, metrics
    return step

  def train_step(self, state: TrainState, batch, rng):
    """One step on a one-device mesh (the loop uses `make_step` with its own mesh)."""
    mesh = jax.make_mesh((1,), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,),
                         devices=jax.devices()[:1])
    return self.make_step(mesh)(state, batch, rng)

  def sample(self, state: TrainState, batch) -> jax.Array:
    """Content batch stylized with the paired style images, in [0, 1]."""
    variables = {"params": generator_params(state.params), "batch_stats": state.extra["batch_stats"]}
    x, peer = batch["content"] * 2.0 - 1.0, batch["style_peer"] * 2.0 - 1.0
    out = self.gen_infer.apply(variables, x, peer)
    return (out + 1.0) * 0.5

r"""Gradients at labels sampled from the model: Gauss–Newton statistics for Shampoo and SOAP.

For softmax cross-entropy :math:`\ell(y, z) = -\log\operatorname{softmax}(z)_y`
the Gauss–Newton matrix of a weight :math:`W` is the second moment of the
gradient at a label drawn from the model's own prediction (Morwani et al.
2025; R. Qiu, "Matrix-Based Optimizers", lecture, 15 October 2025):

.. math::
  \mathbb{E}_x\big[J_x^\top \nabla_z^2 \ell\, J_x\big]
  = \mathbb{E}_{x,\, \hat y \sim \operatorname{softmax}(f(x, \theta))}
    \big[\operatorname{vec}(G_{x,\hat y}) \operatorname{vec}(G_{x,\hat y})^\top\big],

and Shampoo's factors are :math:`L = \mathbb{E}[G_{x,\hat y} G_{x,\hat y}^\top]`,
:math:`R = \mathbb{E}[G_{x,\hat y}^\top G_{x,\hat y}]`. Practical Shampoo and
SOAP put the true labels :math:`y_x` in place of :math:`\hat y` (the
empirical Fisher) to save a backward pass. :func:`sampled_label_grads` pays
that pass: one forward, then two backward passes from the same residuals,
one at the true labels (the gradient to step with) and one at sampled labels
(the gradient to pass as ``stats_grads=`` to :func:`matopt.scale_by_shampoo`
or :func:`matopt.scale_by_soap`).

Why one summed gradient suffices: at a sampled label the gradient of the
logits, :math:`p - e_{\hat y}`, has mean zero, so the cross terms between
positions vanish in expectation and the outer product of the scaled batch
gradient is an unbiased estimate of the Gauss–Newton matrix of the mean
loss, whatever the batch size.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from matopt import _checks


class SampledLabelGrads(NamedTuple):
  """What :func:`sampled_label_grads` returns.

  Attributes:
    loss: the mean cross-entropy at the true labels (float32 scalar).
    grads: its gradient, with the parameters' structure and dtypes.
    stats_grads: the gradient at sampled labels, scaled so that
      :math:`\\mathbb{E}_{\\hat y}[\\operatorname{vec}(G)\\operatorname{vec}(G)^\\top]`
      is the Gauss–Newton matrix of the mean loss over the sampled positions.
    logits: the forward pass's logits (for metrics such as accuracy).
  """

  loss: jax.Array
  grads: Any
  stats_grads: Any
  logits: jax.Array


def _probabilities_and_loss(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Softmax in float32 and the weighted sum of cross-entropies."""
  z = logits.astype(jnp.float32)
  logp = jax.nn.log_softmax(z, axis=-1)
  nll = -jnp.take_along_axis(logp, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return jnp.exp(logp), jnp.sum(weights * nll)


def _sampled_one_hot_mean(key: jax.Array, logits: jax.Array, num_samples: int) -> jax.Array:
  r"""The mean of ``num_samples`` one-hot labels drawn from ``softmax(logits)``, position by position."""
  z = jax.lax.stop_gradient(logits.astype(jnp.float32))
  draws = jax.random.categorical(key, z, axis=-1, shape=(num_samples, *z.shape[:-1]))
  return jnp.mean(jax.nn.one_hot(draws, z.shape[-1], dtype=jnp.float32), axis=0)


def _take(tree: Any, index: jax.Array) -> Any:
  return jax.tree.map(lambda x: jnp.take(x, index, axis=0), tree)


def sampled_label_grads(
  logits_fn: Callable[[Any, Any], jax.Array],
  params: Any,
  inputs: Any,
  labels: ArrayLike,
  key: ArrayLike,
  *,
  num_samples: int = 1,
  fraction: float = 1.0,
  where: ArrayLike | None = None,
) -> SampledLabelGrads:
  r"""Loss and gradient at the true labels, and the gradient at labels sampled from the model.

  With logits :math:`z_i` at labelled positions :math:`i` (an example, or a
  token of a sequence), weights :math:`w_i` (``where``; 1 by default),
  :math:`W = \sum_i w_i` and :math:`p_i = \operatorname{softmax}(z_i)`:

  .. math::
    \mathcal L = \tfrac{1}{W} \textstyle\sum_i w_i\, \ell(y_i, z_i), \qquad
    G = \nabla_\theta \mathcal L = J^\top \big(w_i (p_i - e_{y_i}) / W\big)_i,
    \\
    \hat G = J^\top \Big(\sqrt{S\, w_i / W_{\mathcal S}}\,
      \big(p_i - \tfrac{1}{S} \textstyle\sum_{s=1}^{S} e_{\hat y_{i,s}}\big)\Big)_{i \in \mathcal S},
    \qquad \hat y_{i,s} \sim p_i,

  where :math:`J^\top` is the backward pass (a VJP of the one forward pass)
  and :math:`\mathcal S` the positions of the sampled examples
  (:math:`W_{\mathcal S}` their weight). Because
  :math:`\mathbb{E}[(p - \bar e)(p - \bar e)^\top] = (\operatorname{diag} p - p p^\top)/S`,
  the softmax cross-entropy's Hessian in the logits, over :math:`S`,

  .. math::
    \mathbb{E}_{\hat y}\big[\operatorname{vec}(\hat G)\operatorname{vec}(\hat G)^\top\big]
    = \tfrac{1}{W_{\mathcal S}} \textstyle\sum_{i \in \mathcal S} w_i\,
      J_i^\top (\operatorname{diag} p_i - p_i p_i^\top) J_i,

  the Gauss–Newton matrix of the mean loss over :math:`\mathcal S`; so
  :math:`\hat G \hat G^\top` and :math:`\hat G^\top \hat G` estimate Shampoo's
  Gauss–Newton factors without bias, for any batch size and :math:`S`. The
  true-label gradient's statistics :math:`G G^\top` do not: they hold
  :math:`\nabla\mathcal L\, \nabla\mathcal L^\top` and use :math:`y` where the
  Gauss–Newton matrix averages over :math:`\hat y` (the seed lecture's
  ":math:`y_x` instead of sampling").

  Cost: the forward pass once and two backward passes; with ``fraction < 1``
  a random subset of ``ceil(fraction · batch)`` examples (chosen with
  ``key``, so the estimate stays unbiased for the whole batch) is run
  through the forward pass separately from the rest, and only its backward
  pass is taken twice: one forward and ``1 + fraction`` backward passes.

  Usage with any optimizer built on :func:`matopt.scale_by_shampoo` or
  :func:`matopt.scale_by_soap`::

    out = matopt.sampled_label_grads(model_apply, params, x, y, key)
    updates, state = tx.update(out.grads, state, params, stats_grads=out.stats_grads)

  For a ``flax.nnx`` model, :func:`nnx_sampled_label_grads`.

  Args:
    logits_fn: ``logits_fn(params, inputs) -> logits`` of shape
      ``labels.shape + (classes,)``; every leaf of ``inputs`` has the
      examples on its leading axis, and so do ``labels`` and the logits.
    params: the parameters to differentiate.
    inputs: the model's inputs (a pytree).
    labels: integer labels, ``(batch, ...)`` (e.g. ``(batch, tokens)``).
    key: PRNG key for the sampled labels (and the subset).
    num_samples: labels drawn per position, :math:`S`; the backward pass is
      still taken once, at their mean one-hot. This lowers each position's
      label noise, but over a batch of many positions :math:`\hat G` is
      already close to Gaussian with covariance the Gauss–Newton matrix for
      any :math:`S`, so the variance of :math:`\hat G \hat G^\top` barely
      changes (measured on softmax regression with 256 examples: the same
      error with 4 samples as with 1, ``notebooks/05_gauss_newton.ipynb``);
      it helps only for batches of few positions.
    fraction: share of the batch's examples whose sampled gradient is taken,
      in (0, 1].
    where: weights (or a boolean mask) of the positions, shaped like
      ``labels``; None: all 1.

  Returns:
    :class:`SampledLabelGrads`: ``loss``, ``grads``, ``stats_grads`` and ``logits``.

  References:
    Morwani, Shapira, Vyas, Malach, Kakade, Janson, 2025. A New Perspective
    on Shampoo's Preconditioner. ICLR.

    Martens, 2020. New Insights and Perspectives on the Natural Gradient
    Method. JMLR 21(146), §9 (the empirical Fisher).
  """
  forward = lambda p, x, carry: (logits_fn(p, x), carry)
  return _sampled_label_grads(
    forward, params, inputs, labels, key, None, num_samples=num_samples, fraction=fraction, where=where
  )[0]


def _sampled_label_grads(
  forward: Callable[[Any, Any, Any], tuple[jax.Array, Any]],
  params: Any,
  inputs: Any,
  labels: ArrayLike,
  key: ArrayLike,
  carry: Any,
  *,
  num_samples: int,
  fraction: float,
  where: ArrayLike | None,
) -> tuple[SampledLabelGrads, Any]:
  """:func:`sampled_label_grads` with ``forward(params, inputs, carry) -> (logits, carry)``,
  a state (nnx's non-parameter variables) threaded through the forward calls."""
  _checks.check_positive_int("num_samples", num_samples)
  _checks.check_range("fraction", fraction, 0.0, 1.0, lo_open=True)
  labels = jnp.asarray(labels)
  batch = labels.shape[0] if labels.ndim else 0
  if batch == 0:
    raise ValueError(f"sampled_label_grads: labels need a leading batch axis with examples, got shape {labels.shape}.")
  for path, leaf in jax.tree_util.tree_flatten_with_path(inputs)[0]:
    if jnp.ndim(leaf) == 0 or jnp.shape(leaf)[0] != batch:
      raise ValueError(
        f"sampled_label_grads: inputs{jax.tree_util.keystr(path)} has shape {jnp.shape(leaf)}; every input"
        f" leaf needs the examples on its leading axis, {batch} like labels {labels.shape}."
      )
  weights = jnp.ones(labels.shape, jnp.float32) if where is None else jnp.asarray(where).astype(jnp.float32)
  if weights.shape != labels.shape:
    raise ValueError(f"sampled_label_grads: where has shape {weights.shape}; it must match labels {labels.shape}.")
  sample_key, subset_key = jax.random.split(key)
  k = min(batch, max(1, math.ceil(fraction * batch)))

  # The sampled examples first, the rest after: two forward calls that
  # together are one forward pass over the batch.
  if k < batch:
    order = jax.random.permutation(subset_key, batch)
    parts = [order[:k], order[k:]]
    chunks = [(_take(inputs, i), jnp.take(labels, i, axis=0), jnp.take(weights, i, axis=0)) for i in parts]
  else:
    chunks = [(inputs, labels, weights)]
  total = jnp.sum(weights)
  safe = lambda x: jnp.where(x > 0, x, 1.0)  # all weights zero: zero gradients, not NaN

  loss, grads, logits_out, stats_grads = 0.0, None, [], None
  for c, (x, y, w) in enumerate(chunks):
    logits, vjp, carry = jax.vjp(lambda p, x=x, carry=carry: forward(p, x, carry), params, has_aux=True)
    if logits.shape[:-1] != y.shape:
      raise ValueError(
        f"sampled_label_grads: the model gave logits {logits.shape}; they must be labels' shape"
        f" {y.shape} plus a class axis."
      )
    probs, nll = _probabilities_and_loss(logits, y, w)
    loss = loss + nll / safe(total)
    onehot = jax.nn.one_hot(y, logits.shape[-1], dtype=jnp.float32)
    (g,) = vjp(((probs - onehot) * (w / safe(total))[..., None]).astype(logits.dtype))
    grads = g if grads is None else jax.tree.map(jnp.add, grads, g)
    logits_out.append(logits)
    if c == 0:  # the sampled subset (the whole batch when fraction = 1)
      mean_draw = _sampled_one_hot_mean(sample_key, logits, num_samples)
      scale = jnp.sqrt(num_samples * w / safe(jnp.sum(w)))
      (stats_grads,) = vjp(((probs - mean_draw) * scale[..., None]).astype(logits.dtype))
  logits = logits_out[0] if k == batch else jnp.concatenate(logits_out, axis=0)
  if k < batch:  # back in the inputs' order
    logits = jnp.take(logits, jnp.argsort(order), axis=0)
  return SampledLabelGrads(jnp.asarray(loss, jnp.float32), grads, stats_grads, logits), carry


def nnx_sampled_label_grads(
  model: Any,
  inputs: Any,
  labels: ArrayLike,
  key: ArrayLike,
  *,
  num_samples: int = 1,
  fraction: float = 1.0,
  where: ArrayLike | None = None,
  wrt: Any = None,
) -> SampledLabelGrads:
  """:func:`sampled_label_grads` for a ``flax.nnx`` model called as ``model(inputs)``.

  The gradients are ``nnx.State`` of the model's ``wrt`` variables
  (``nnx.Param`` by default), as ``nnx.grad`` gives them, ready for
  ``nnx.Optimizer.update``, which forwards ``stats_grads=`` to the
  transform::

    out = matopt.nnx_sampled_label_grads(model, x, y, key)
    optimizer.update(model, out.grads, stats_grads=out.stats_grads)

  Other state the forward pass changes (batch statistics, RNG counts) is
  written back to ``model``, as a plain call would. With ``fraction < 1``
  the batch goes through the model in two parts, so a layer that
  normalises over the batch (``nnx.BatchNorm`` in training mode) sees two
  batches and updates its statistics twice: keep ``fraction=1`` for such
  models.

  Args:
    model: an ``nnx.Module`` returning logits ``labels.shape + (classes,)``.
    inputs, labels, key, num_samples, fraction, where: as in
      :func:`sampled_label_grads`.
    wrt: the ``nnx`` filter of the variables to differentiate (None: ``nnx.Param``).

  Returns:
    :class:`SampledLabelGrads` with ``nnx.State`` gradients.
  """
  from flax import nnx  # optional: the core library does not need flax

  wrt = nnx.Param if wrt is None else wrt
  graphdef, params, rest = nnx.split(model, wrt, ...)

  def forward(p, x, rest):
    m = nnx.merge(graphdef, p, rest, copy=True)  # fresh Variables inside the vjp's trace (BatchNorm mutates)
    return m(x), nnx.state(m, nnx.Not(wrt))

  out, rest = _sampled_label_grads(
    forward, params, inputs, labels, key, rest, num_samples=num_samples, fraction=fraction, where=where
  )
  nnx.update(model, rest)
  return out

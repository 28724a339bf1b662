"""Tasks: a dataset, a model and a loss, with their own config sections.

:class:`Task` is what the runner and the trainer need of a task, and all
they know of it: batches as pure functions of the step, a fresh model for a
seed, a loss, metrics by name, the update arguments its models can report
(QK-clip's ``max_logits``) and the model facts optimizers may take as
options (Scion's ``recipe``, QK-clip's heads). ``model:`` and ``data:`` in a
config are checked against the task's dataclasses.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Mapping
from typing import Any, ClassVar, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from matopt.experiments import data as data_lib
from matopt.experiments import models
from matopt.experiments.config import (
  Config,
  ConfigError,
  check_fields,
  check_positive,
  count,
)

Batch = Any  # an array or a tuple of arrays, leading axis the examples


@runtime_checkable
class Task(Protocol):
  """What ``matopt run`` needs of a task (:data:`TASKS` maps config names to classes).

  The class is built as ``Task(config)`` after the config is checked; before
  that, the class's ``check`` and ``update_args`` are read to check the
  config. Batches are functions of the step alone, so a resumed run sees the
  batches an uninterrupted one would.

  Attributes:
    unit: what throughput counts (``"tokens"``, ``"examples"``).
    loss_unit: what a loss is measured in (``"nats/byte"``).
    metric_names: the keys of :meth:`metrics`, in the order the results table shows them.
    update_args: the arguments of an optimizer's ``update`` this task's models
      can report (``make_model(seed, report=...)``), each with the history
      key of its per-step largest value: ``{"max_logits": "max_logit"}``.
    units_per_step: units (``unit``) in one training batch.
  """

  unit: ClassVar[str]
  loss_unit: ClassVar[str]
  metric_names: ClassVar[tuple[str, ...]]
  update_args: ClassVar[Mapping[str, str]]
  units_per_step: int

  @staticmethod
  def check(model: Mapping[str, Any], data: Mapping[str, Any]) -> tuple[Any, Any]:
    """The config's ``model:`` and ``data:`` sections, checked (ConfigError otherwise)."""
    ...

  def make_model(self, seed: int, *, report: Collection[str] = ()) -> nnx.Module:
    """A fresh model; for each name in ``report`` (of :attr:`update_args`) it
    sows that update argument as an ``nnx.Intermediate`` of the same name."""
    ...

  def train_batch(self, step: int, seed: int | None = None) -> Batch:
    """The training batch of ``step`` in the data order of ``seed`` (None: the config's ``seed``)."""
    ...

  def val_batches(self) -> Batch:
    """Every validation batch, stacked on a leading axis."""
    ...

  def inputs_and_labels(self, batch: Batch) -> tuple[Any, jax.Array]:
    """``(inputs, labels)`` of a batch: ``model(inputs)`` gives logits of shape
    ``labels.shape + (classes,)``, every inputs leaf with the examples on its
    leading axis. :meth:`loss` is their mean cross-entropy, and the
    Gauss–Newton optimizers (``shampoo_gn``, ``soap_gn``) sample labels from
    these logits (:func:`matopt.sampled_label_grads`); a task without this
    method cannot run those."""
    ...

  def loss(self, model: nnx.Module, batch: Batch) -> tuple[jax.Array, Any]:
    """``(mean loss, aux)``; ``aux`` is a pytree of scalars averaged over the validation batches."""
    ...

  def metrics(self, val_loss: float, val_aux: Any) -> dict[str, float]:
    """The reported metrics (keys :attr:`metric_names`) from the validation loss and averaged aux."""
    ...

  def model_options(self) -> Mapping[str, Any]:
    """Optimizer options this task's model determines (``recipe``, ``query``, ``key``,
    ``head_dim``); an optimizer takes those its registry record lists as ``model_options``."""
    ...


POSITIONS = ("rope", "learned")
IMAGE_MODELS = ("mlp", "cnn")


def _checked(cls: type, raw: Mapping[str, Any], where: str) -> Any:
  obj = cls(**check_fields(cls, raw, where))
  for f in dataclasses.fields(obj):
    value = getattr(obj, f.name)
    if isinstance(value, int) and not isinstance(value, bool):
      check_positive(f"{where}.{f.name}", value, zero_ok=f.name == "val_percent")
  return obj


def _sections(
  model_cls: type,
  data_cls: type,
  model: Mapping[str, Any],
  data: Mapping[str, Any],
  choices: Mapping[str, tuple[str, ...]],
) -> tuple[Any, Any]:
  """Check ``model:`` and ``data:``: keys, types, positive ints, the named
  string choices of the model, and ``val_percent`` in (0, 100)."""
  m = _checked(model_cls, model, "config.model")
  d = _checked(data_cls, data, "config.data")
  for field, valid in choices.items():
    if getattr(m, field) not in valid:
      raise ConfigError(f"config.model.{field}: unknown {getattr(m, field)!r}; valid choices are {valid}.")
  if not 0 < d.val_percent < 100:
    raise ConfigError(f"config.data.val_percent must lie in (0, 100), got {d.val_percent}.")
  return m, d


@dataclasses.dataclass(frozen=True)
class GPTModel:
  layers: int = 2
  width: int = 64
  heads: int = 4
  seq_len: int = 64
  positions: str = "rope"  # "rope" | "learned"


@dataclasses.dataclass(frozen=True)
class GPTData:
  max_bytes: int = 2_000_000
  val_percent: int = 10


class GPTTask:
  """Byte-level language modelling on the Python standard library's sources.

  Reports loss in nats per byte, perplexity and bits per byte; Scion's
  language recipe (ColNorm → Spectral → Sign) by default. Its attention can
  report each head's largest logit (``max_logits``, for QK-clip).
  """

  unit = "tokens"
  loss_unit = "nats/byte"  # mean cross-entropy per predicted byte
  metric_names = ("val_perplexity", "val_bits_per_byte")
  update_args: ClassVar[Mapping[str, str]] = {"max_logits": "max_logit"}

  @staticmethod
  def check(model: Mapping[str, Any], data: Mapping[str, Any]) -> tuple[GPTModel, GPTData]:
    m, d = _sections(GPTModel, GPTData, model, data, {"positions": POSITIONS})
    if m.width % m.heads or (m.width // m.heads) % 2:
      raise ConfigError(f"config.model: width {m.width} must split into {count(m.heads, 'head')} of even size.")
    return m, d

  def __init__(self, config: Config):
    self.config = config
    self.model_cfg, self.data_cfg = self.check(config.model, config.data)
    self.train, self.val = data_lib.stdlib_corpus(
      max_bytes=self.data_cfg.max_bytes, val_percent=self.data_cfg.val_percent
    )
    length = self.model_cfg.seq_len + 1
    for split, corpus in (("train", self.train), ("validation", self.val)):
      if len(corpus) <= length:
        raise ConfigError(
          f"The {split} corpus has {count(len(corpus), 'byte')}, fewer than seq_len + 1; raise data.max_bytes."
        )
    starts = data_lib.random_starts(config.seed, 2, 0, config.eval_batches * config.batch_size, len(self.val), length)
    self._val = data_lib.windows(self.val, starts, length).reshape(config.eval_batches, config.batch_size, length)
    self.units_per_step = config.batch_size * self.model_cfg.seq_len

  def model_options(self) -> dict[str, Any]:
    """Scion's language recipe; QK-clip's heads in the fused ``qkv`` kernels of :class:`models.Attention`."""
    return {
      "recipe": "language",
      "query": "qkv",
      "key": "qkv",
      "head_dim": self.model_cfg.width // self.model_cfg.heads,
    }

  def make_model(self, seed: int, *, report: Collection[str] = ()) -> nnx.Module:
    m = self.model_cfg
    return models.GPT(
      vocab=256,
      width=m.width,
      layers=m.layers,
      heads=m.heads,
      seq_len=m.seq_len,
      positions=m.positions,
      rngs=nnx.Rngs(seed),
      report_logits="max_logits" in report,
    )

  def train_batch(self, step: int, seed: int | None = None) -> np.ndarray:
    length = self.model_cfg.seq_len + 1
    seed = self.config.seed if seed is None else seed
    starts = data_lib.random_starts(seed, 1, step, self.config.batch_size, len(self.train), length)
    return data_lib.windows(self.train, starts, length)

  def val_batches(self) -> np.ndarray:
    return self._val

  @staticmethod
  def inputs_and_labels(batch: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Each byte predicts the next."""
    return batch[:, :-1], batch[:, 1:]

  @classmethod
  def loss(cls, model: nnx.Module, batch: jax.Array) -> tuple[jax.Array, jax.Array]:
    inputs, labels = cls.inputs_and_labels(batch)
    logits = model(inputs).astype(jnp.float32)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, jnp.zeros([])

  @staticmethod
  def metrics(val_loss: float, val_aux: float) -> dict[str, float]:
    del val_aux
    return {"val_perplexity": math.exp(min(val_loss, 700.0)), "val_bits_per_byte": val_loss / math.log(2)}


@dataclasses.dataclass(frozen=True)
class DigitsModel:
  kind: str = "mlp"  # "mlp" | "cnn"
  width: int = 64
  layers: int = 2


@dataclasses.dataclass(frozen=True)
class DigitsData:
  val_percent: int = 20


class DigitsTask:
  """scikit-learn's 8×8 digits (bundled with the package): an MLP or a small
  CNN; reports validation accuracy; Scion's image recipe by default."""

  unit = "examples"
  loss_unit = "nats/example"  # mean cross-entropy per image
  metric_names = ("val_accuracy",)
  update_args: ClassVar[Mapping[str, str]] = {}  # no attention: nothing for QK-clip

  @staticmethod
  def check(model: Mapping[str, Any], data: Mapping[str, Any]) -> tuple[DigitsModel, DigitsData]:
    return _sections(DigitsModel, DigitsData, model, data, {"kind": IMAGE_MODELS})

  def __init__(self, config: Config):
    self.config = config
    self.model_cfg, self.data_cfg = self.check(config.model, config.data)
    (self.x, self.y), (xv, yv) = data_lib.digits(val_percent=self.data_cfg.val_percent)
    # The whole validation split, cut into eval_batches equal batches (the rest dropped).
    per = len(yv) // config.eval_batches
    if per == 0:
      raise ConfigError(
        f"config.eval_batches {config.eval_batches} exceeds the {count(len(yv), 'validation image')};"
        " lower it, or raise config.data.val_percent."
      )
    n = per * config.eval_batches
    self._val = (xv[:n].reshape(config.eval_batches, per, 8, 8, 1), yv[:n].reshape(config.eval_batches, per))
    self.units_per_step = config.batch_size

  def model_options(self) -> dict[str, Any]:
    """Scion's image recipe (Spectral → Spectral → Sign)."""
    return {"recipe": "image"}

  def make_model(self, seed: int, *, report: Collection[str] = ()) -> nnx.Module:
    del report  # update_args is empty: nothing to report
    m, rngs = self.model_cfg, nnx.Rngs(seed)
    if m.kind == "cnn":
      return models.CNN(in_channels=1, width=m.width, layers=m.layers, classes=10, rngs=rngs)
    return models.MLP(in_features=64, width=m.width, layers=m.layers, classes=10, rngs=rngs)

  def train_batch(self, step: int, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([self.config.seed if seed is None else seed, 1, step])
    idx = rng.integers(0, len(self.y), size=self.config.batch_size)
    return self.x[idx], self.y[idx]

  def val_batches(self) -> tuple[np.ndarray, np.ndarray]:
    return self._val

  @staticmethod
  def inputs_and_labels(batch: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """Images ``(batch, 8, 8, 1)`` and their digits."""
    return batch

  @classmethod
  def loss(cls, model: nnx.Module, batch: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
    x, y = cls.inputs_and_labels(batch)
    logits = model(x).astype(jnp.float32)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, jnp.mean(jnp.argmax(logits, -1) == y)

  @staticmethod
  def metrics(val_loss: float, val_aux: float) -> dict[str, float]:
    del val_loss
    return {"val_accuracy": val_aux}


#: Every task by its config name (``task:`` in a YAML config).
TASKS: dict[str, type[Task]] = {"gpt": GPTTask, "digits": DigitsTask}

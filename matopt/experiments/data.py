"""Data that ships with the machine: Python's own sources, sklearn's digits.

Nothing is downloaded. Batches are pure functions of ``(seed, step)``, so a
resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import sysconfig
import zlib
from pathlib import Path

import numpy as np


def stdlib_files(root: str | Path | None = None) -> list[Path]:
  """The standard library's top-level ``.py`` files, sorted by name."""
  root = Path(root or sysconfig.get_paths()["stdlib"])
  files = sorted(root.glob("*.py"))
  if not files:
    raise FileNotFoundError(
      f"No .py sources under {root}: this Python ships its standard library without "
      "sources; install the python3 source package or use the 'digits' task."
    )
  return files


def is_validation(path: Path, val_percent: int) -> bool:
  """Split by file: a stable hash of the name, so the split is the same on
  every machine with the same Python version."""
  return zlib.crc32(path.name.encode()) % 100 < val_percent


def stdlib_corpus(*, max_bytes: int, val_percent: int, root: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Byte-level train and validation corpora from the standard library.

  Files are read in name order until each split holds its share of
  ``max_bytes`` (train ``1 - val_percent/100``, validation the rest).

  Returns:
    ``(train, val)`` uint8 arrays.
  """
  budget = {False: max_bytes * (100 - val_percent) // 100, True: max_bytes * val_percent // 100}
  parts = {False: [], True: []}
  for path in stdlib_files(root):
    split = is_validation(path, val_percent)
    left = budget[split] - sum(len(p) for p in parts[split])
    if left > 0:
      parts[split].append(path.read_bytes()[:left])
  train, val = (np.frombuffer(b"".join(parts[s]), np.uint8) for s in (False, True))
  return train, val


def windows(corpus: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
  """``corpus[s : s + length]`` for each start, as a ``(len(starts), length)`` int32 array."""
  return corpus[starts[:, None] + np.arange(length)].astype(np.int32)


def random_starts(seed: int, stream: int, step: int, count: int, corpus_len: int, length: int) -> np.ndarray:
  """Window starts for one batch: a function of ``(seed, stream, step)`` only."""
  rng = np.random.default_rng([seed, stream, step])
  return rng.integers(0, corpus_len - length, size=count)


def digits(
  *, val_percent: int, split_seed: int = 0
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
  """scikit-learn's bundled 8×8 digits (1797 images), scaled to [0, 1].

  Returns:
    ``((x_train, y_train), (x_val, y_val))`` with images ``(n, 8, 8, 1)``.
  """
  try:
    from sklearn.datasets import load_digits
  except ImportError as e:
    raise ImportError("The 'digits' task needs scikit-learn: pip install 'matopt[digits]'.") from e
  bunch = load_digits()
  x = (bunch.images / 16.0).astype(np.float32)[..., None]
  y = bunch.target.astype(np.int32)
  order = np.random.default_rng(split_seed).permutation(len(y))
  n_val = len(y) * val_percent // 100
  val, train = order[:n_val], order[n_val:]
  return (x[train], y[train]), (x[val], y[val])

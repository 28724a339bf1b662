"""Data: the standard-library corpus and digits are deterministic, split by
file, and batches are functions of the step alone."""

import sys

import numpy as np
import pytest

from matopt.experiments import data


def test_corpus_is_deterministic_and_split_by_file():
  files = data.stdlib_files()
  val = [f for f in files if data.is_validation(f, 10)]
  assert 0 < len(val) < len(files) // 4
  a_train, a_val = data.stdlib_corpus(max_bytes=200_000, val_percent=10)
  b_train, b_val = data.stdlib_corpus(max_bytes=200_000, val_percent=10)
  np.testing.assert_array_equal(a_train, b_train)
  np.testing.assert_array_equal(a_val, b_val)
  assert len(a_train) == 180_000 and len(a_val) == 20_000
  # Validation text comes from validation files only.
  first_val = val[0].read_bytes()[:1000]
  assert bytes(a_val[:1000]) == first_val
  assert first_val not in bytes(a_train)


def test_windows_and_starts():
  corpus = np.arange(100, dtype=np.uint8)
  starts = data.random_starts(0, 1, 5, 4, len(corpus), 9)
  np.testing.assert_array_equal(starts, data.random_starts(0, 1, 5, 4, len(corpus), 9))
  assert not np.array_equal(starts, data.random_starts(0, 1, 6, 4, len(corpus), 9))
  w = data.windows(corpus, starts, 9)
  assert w.shape == (4, 9) and w.dtype == np.int32
  np.testing.assert_array_equal(w[:, 1:] - w[:, :-1], 1)
  np.testing.assert_array_equal(w[:, 0], starts)


def test_digits_split():
  (x, y), (xv, yv) = data.digits(val_percent=20)
  assert x.shape[1:] == (8, 8, 1) and len(x) + len(xv) == 1797 and len(xv) == 359
  assert 0.0 <= x.min() and x.max() <= 1.0
  assert set(np.unique(y)) == set(range(10)) == set(np.unique(yv))


def test_missing_sources_and_missing_sklearn_say_what_to_do(tmp_path, monkeypatch):
  with pytest.raises(
    FileNotFoundError, match=r"No \.py sources under .*install the python3 source package or use the 'digits' task"
  ):
    data.stdlib_files(tmp_path)
  monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # import now fails, as without scikit-learn
  with pytest.raises(ImportError, match=r"pip install 'matopt\[digits\]'"):
    data.digits(val_percent=20)

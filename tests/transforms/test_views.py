"""Matrix views of leaves: dimension numbers, defaults and round trips."""

import jax.numpy as jnp
import numpy as np
import pytest
from optax.contrib import MuonDimensionNumbers

from matopt.transforms import views


@pytest.mark.parametrize(
    "shape, dn, expected",
    [
        ((4, 6), None, (1, 4, 6)),
        ((3, 3, 8, 16), None, (1, 72, 16)),  # conv kernel: (kh·kw·c_in, c_out)
        ((5, 4, 6), views.DimensionNumbers(1, 2), (5, 4, 6)),  # stacked layers
        ((5, 4, 6), MuonDimensionNumbers(reduction_axis=1, output_axis=2), (5, 4, 6)),
        ((4, 2, 6), views.DimensionNumbers(0, (1, 2)), (1, 4, 12)),
        ((7,), views.DimensionNumbers((), 0), (1, 1, 7)),  # bias as a (1, n) row
        ((), views.DimensionNumbers((), ()), (1, 1, 1)),
    ],
)
def test_view_shapes_and_round_trip(shape, dn, expected):
  x = jnp.arange(int(np.prod(shape)), dtype=jnp.float32).reshape(shape)
  dn = views.default_dimension_numbers(len(shape)) if dn is None else dn
  view = views.make_view(shape, dn, "leaf")
  m = view.to_matrices(x)
  assert m.shape == expected
  np.testing.assert_array_equal(view.from_matrices(m), x)


def test_stacked_view_puts_batch_first():
  x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 5, 3)), jnp.float32)  # (in, L, out)
  view = views.make_view(x.shape, views.DimensionNumbers(0, 2), "leaf")
  m = view.to_matrices(x)
  np.testing.assert_array_equal(m[1], x[:, 1, :])


def test_resolve_views_names_vector_leaf():
  tree = {"layer": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones(4)}}
  with pytest.raises(ValueError, match=r"scale_by_x acts on matrices, but leaf 'layer/bias' has shape \(4,\).*Label it"):
    views.resolve_views(None, tree, transform="scale_by_x")


def test_bad_dimension_numbers_raise():
  with pytest.raises(ValueError, match=r"'w'.*distinct axes in range\(2\)"):
    views.make_view((3, 4), views.DimensionNumbers(0, 0), "w")
  with pytest.raises(ValueError, match=r"'w'.*distinct axes"):
    views.make_view((3, 4), views.DimensionNumbers(0, 2), "w")
  with pytest.raises(ValueError, match="dimension_numbers must be None"):
    views.check_dimension_numbers_spec({"w": (0, 1)})
  with pytest.raises(ValueError, match="must hold ints"):
    views.check_dimension_numbers_spec(views.DimensionNumbers(0.5, 1))

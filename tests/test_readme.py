"""The README's Python snippets run as written (in order, one namespace)."""

import pathlib
import re

import jax.numpy as jnp

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_snippets_run():
  blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
  assert len(blocks) >= 4
  namespace: dict = {}
  for block in blocks:
    exec(compile(block, str(README), "exec"), namespace)
  # The snippets build a working nnx optimizer and take a real step with it.
  model, optimizer = namespace["model"], namespace["optimizer"]
  x = jnp.ones((4, 8))
  before = model.kernel[...].copy()
  namespace["train_step"](model, optimizer, x, jnp.zeros((4, 8)))
  assert not jnp.allclose(before, model.kernel[...])

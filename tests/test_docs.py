"""docs/getting_started.md's Python snippets run as written (in order, one namespace)."""

import pathlib
import re

import jax
import jax.numpy as jnp

import matopt

REPO = pathlib.Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "getting_started.md"


def test_getting_started_snippets_run():
  text = PAGE.read_text()
  blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
  assert len(blocks) >= 4
  namespace: dict = {}
  for block in blocks:
    exec(compile(block, str(PAGE), "exec"), namespace)
  # The quickstart chain took a step from its initial matrix; both training loops learned.
  assert not jnp.allclose(namespace["params"]["w"], jax.random.normal(jax.random.key(0), (64, 32)))
  for key in ("nnx_losses", "linen_losses"):
    losses = namespace[key]
    assert len(losses) == 25
    assert losses[-1] < 0.5 * losses[0], (key, losses[0], losses[-1])
  # The page's comments say which layer gets Muon and which AdamW: by_role agrees.
  roles = matopt.labels.by_role(namespace["linen_params"])
  assert roles == {"hidden": {"kernel": "hidden", "bias": "vector"}, "head": {"kernel": "head", "bias": "vector"}}


def test_getting_started_commands_name_real_configs():
  commands = re.findall(r"^matopt run (\S+)", PAGE.read_text(), flags=re.M)
  assert commands
  for name in commands:
    assert (REPO / "configs" / f"{name}.yaml").is_file(), name

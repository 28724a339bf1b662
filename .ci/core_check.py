"""In a core install (`pip install matopt`: jax, optax, numpy), the README's optax snippets run.

Run by .ci/wheel_check from outside the repository, against the installed wheel.
Executes the python blocks of the README's Quickstart section in order, up to the
first that needs flax, then steps every optimizer of matopt.OPTIMIZERS on a dict of
arrays, and checks that neither flax nor the runner's libraries were imported.
"""

import re
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

import matopt

readme = Path(sys.argv[1]).read_text()
quickstart = readme.split("\n## Quickstart", 1)[1].split("\n## ", 1)[0]
namespace: dict = {}
ran = 0
for block in re.findall(r"```python\n(.*?)```", quickstart, flags=re.S):
  if "flax" in block or "nnx" in block:
    break
  exec(compile(block, "README.md (Quickstart)", "exec"), namespace)
  ran += 1
assert ran >= 2, f"expected the Quickstart's optax snippets before any flax one, ran {ran}"

params = {
  "embedding": jax.random.normal(jax.random.key(0), (16, 8)),
  "hidden": {"kernel": jax.random.normal(jax.random.key(1), (8, 8))},
  "head": {"kernel": jax.random.normal(jax.random.key(2), (8, 16)), "bias": jnp.zeros(16)},
}
grads = jax.tree.map(lambda p: jnp.cos(p) + 0.1, params)
stepped = []
for name, info in sorted(matopt.OPTIMIZERS.items()):
  if info.update_args:  # muon_clip needs the model's attention logits; the suite tests it
    continue
  tx = info.factory(1e-2)
  updates, _ = tx.update(grads, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(new)), name
  assert not all(bool(jnp.all(a == b)) for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(params))), name
  stepped.append(name)
loaded = sorted(m for m in ("flax", "orbax", "matplotlib", "rich", "yaml", "chex") if m in sys.modules)
assert not loaded, f"a core import pulled in {loaded}"
print(f"core install: {ran} README snippets and {len(stepped)} optimizers ({', '.join(stepped)}) ran without flax")

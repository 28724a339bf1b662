"""Strict test environment: 8 CPU devices, strict rank promotion, and strict
dtype promotion for matopt's own math (linalg, transforms).

Optimizer tests run with standard dtype promotion because optax's own
transforms (e.g. ``scale_by_adam``'s bias correction) are not strict-clean.
"""

import collections
import itertools
import os
import tempfile

# Must be set before jax is imported anywhere (XLA reads it at backend start).
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Many tests compile the same programs (one optimizer on the same tree in
# several tests): a compilation cache fresh for each run (shared by the xdist
# workers and notebook kernels, which inherit the environment) reuses the
# executables instead of compiling them again, which changes no result.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="matopt-test-jax-cache-")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import importlib.util
import pathlib
import re
import shutil

import jax
import pytest

from tests.optimizers.registry import REGISTRY

jax.config.update("jax_numpy_rank_promotion", "raise")

_STRICT_DIRS = ("linalg", "transforms")


@pytest.fixture(autouse=True)
def _strict_environment(request):
  assert jax.device_count() == 8, "tests expect 8 host devices (XLA_FLAGS)"
  parts = pathlib.Path(str(request.node.path)).parts
  mode = "strict" if any(d in parts for d in _STRICT_DIRS) else "standard"
  with jax.numpy_dtype_promotion(mode):
    yield


def pytest_sessionfinish(session):
  # The controller made the compilation cache for this run; it removes it
  # (xdist workers finish first and have a ``workerinput``).
  cache = os.environ.get("JAX_COMPILATION_CACHE_DIR", "")
  if not hasattr(session.config, "workerinput") and os.path.basename(cache).startswith("matopt-test-jax-cache-"):
    shutil.rmtree(cache, ignore_errors=True)


# Markers (registered in pyproject.toml), given here by node id in one table
# rather than by decorators over the files. A pattern names a test directory
# or file (all its tests), a test function (all its cases) or cases: ``*``
# matches any text and ``(a|b)`` one of the alternatives. The times are CPU
# seconds per case on the 2-core CI machine, in a full ``-n 2`` run or, where
# a case reuses another's compilation there, in the fast subset (nearly all
# of it XLA compiling an optimizer's step: the programs run in microseconds).
# "slow" is 0.5 s or more, and in sweeps over every optimizer each case but
# signum's (the cheapest; 0.1–1.6 s each, seconds per sweep): that leaves the
# fast subset (-m "not slow and not notebook and not parity and not mesh")
# at about a minute on 2 workers.
# From the test registry, so a new optimizer's cases are slow without an edit here.
_OPTIMIZERS_BUT_SIGNUM = "(" + "|".join(sorted(n for n in REGISTRY if n != "signum")) + ")"
_MARKS = (
  # (markers, pattern, why)
  (("parity",), "tests/parity", "runs the reference packages of the [parity] extra"),
  (
    ("notebook", "slow"),
    "tests/test_notebooks.py::test_notebook_executes",
    "a Jupyter kernel runs a notebook: 10–70 s",
  ),
  (
    ("notebook", "mesh", "slow"),
    "tests/test_notebooks.py::test_notebook_executes[04_sharding]",
    "the sharding notebook shards over the 8 host devices",
  ),
  # Tests that build a jax.sharding.Mesh of the 8 host devices (the rest of
  # these files builds none and stays in the fast subset).
  (
    ("mesh", "slow"),
    "tests/test_sharding.py::test_("
    "sharded_equals_single_device_and_flops_fall|optimizer_state_sharding_is_stable_and_compiles_once"
    "|small_groups_and_big_matrices_fall_back|preconditioners_sharded_equal_single_device_each_device_its_share"
    "|preconditioner_state_is_distributed_stable_and_compiles_once|replicated_parameters_state_compiles_once"
    "|extreme_and_zero_gradients_stay_finite_on_a_mesh)",
    "one-device and sharded steps compiled: 1.5–21 s",
  ),
  (
    ("mesh",),
    "tests/test_sharding.py::test_explicit_exchange_gives_each_device_whole_matrices",
    "map_stacked's exchange on a (4, 2) mesh of small matrices: 0.3–0.6 s",
  ),
  (("mesh", "slow"), "tests/test_sharding_preconditioners.py::test_mesh_run_equals_one_device", "5.5–13 s"),
  (("mesh", "slow"), "tests/test_sharding_recipe.py", "each case compiles a sharded and a one-device step: 1.3–7.4 s"),
  (("mesh",), "tests/experiments/test_mesh.py::test_layout", "place_params/place_batch on a (4, 2) mesh: 0.01 s"),
  (
    ("mesh", "slow"),
    "tests/experiments/test_mesh.py::test_(mesh_run_matches_one_device_and_resumes|shipped_mesh_config_loads_and_runs)",
    "trains a GPT on one device and on the mesh: 13–32 s",
  ),
  (
    ("mesh", "slow"),
    "tests/experiments/test_mesh.py::test_the_update_exchanges_blocks_not_whole_stacks",
    "compiles a 4-layer GPT's Muon step on a (4, 2) mesh: 17 s",
  ),
  (
    ("mesh", "slow"),
    "tests/experiments/test_processes.py::test_run_in_two_processes_equals_one",
    "matopt run as 2 processes (each compiling) and in this process on 8 devices: 65 s",
  ),
  # Slow: whole files.
  (("slow",), "tests/experiments/test_runner.py", "matopt run end to end, trains GPTs and digit models: 3–20 s"),
  (("slow",), "tests/linalg/test_lapack.py", "compiles batched LAPACK calls and optimizer steps: 0.9–5.4 s"),
  (("slow",), "tests/linalg/test_msign_properties.py", "hypothesis: a compilation per drawn shape: 10–16 s"),
  (("slow",), "tests/optimizers/test_qk_clip_chain.py", "2.0–3.2 s"),
  (("slow",), "tests/optimizers/test_cautious_decay.py", "0.1–4.2 s; 1.2–2.4 s for the cheapest alone"),
  (("slow",), "tests/optimizers/test_scion_stacked.py", "1.8–2.6 s"),
  (("slow",), "tests/test_examples.py", "trains the qk_clip_nnx example twice: 10 s"),
  (("mesh", "slow"), "tests/test_readme.py", "the README's snippets step an nnx model and shard on a mesh: 4.2 s"),
  (
    ("mesh", "slow"),
    "tests/test_multiprocess.py",
    "2 and 4 jax.distributed processes on localhost (gloo) compile each optimizer's sharded step: 33–93 s",
  ),
  (
    ("mesh", "slow"),
    "tests/benchmarks/test_comm_bytes.py::test_(quick_mode_moves_exactly_the_minimum|all_gather_and_all_to_all_bytes"
    "|all_reduce_on_a_mesh_axis_and_collective_permute_bytes|a_collective_in_a_loop_counts_each_trip"
    "|other_layouts_move_exactly_the_minimum)",
    "compiles shard_maps, or matopt.muon's step, on the 8 host devices: 0.4–6 s",
  ),
  (
    ("mesh",),
    "tests/benchmarks/test_comm_bytes.py::test_minimum_counts_each_layout_and_the_padding",
    "device_put on a mesh: 0.01 s",
  ),
  (
    ("slow",),
    "tests/test_docs.py::test_getting_started_snippets_run",
    "docs/getting_started.md's nnx and linen loops: ~3 s",
  ),
  (
    ("slow",),
    "tests/test_labels_models.py",
    "transformers' Flax models; importing transformers (and torch) alone takes 4 s a worker",
  ),
  (
    ("slow",),
    "tests/experiments/test_gauss_newton_runs.py::test_(a_soap_gn_run_learns_and_resumed_equals_uninterrupted"
    "|the_gn_step_steps_with_the_gradient_and_takes_statistics_from_sampled_labels)",
    "trains tiny GPT and digits models with shampoo_gn / soap_gn: 10–40 s",
  ),
  (
    ("slow",),
    "tests/experiments/test_logs.py::test_lines_mirror_the_history_and_a_resumed_run_rewrites_from_its_checkpoint",
    "trains a digits MLP three times, once checkpointed: 4–9 s",
  ),
  (
    ("slow",),
    "tests/test_gauss_newton.py::test_(sampled_statistics_converge_to_gauss_newton_factors"
    "|sequence_model_with_masked_tokens_is_unbiased|empirical_fisher_is_not_the_gauss_newton_factors)",
    "vmaps thousands of sampled gradients: 3–9 s",
  ),
  (
    ("mesh", "slow"),
    "tests/transforms/test_stats_grads.py::test_explicit_mesh_equals_no_mesh",
    "Shampoo with stats_grads under a 2-device explicit mesh: 4–8 s",
  ),
  # Slow: functions (all their cases) and cases.
  (("slow",), "tests/experiments/test_data.py::test_digits_split", "loads scikit-learn's digits: 1.6 s"),
  (
    ("slow",),
    "tests/experiments/test_models.py::test_(gpt_roles_and_shapes|rope_is_a_rotation_that_depends_on_position"
    "|image_model_roles|attention_reports_each_heads_largest_causal_logit)",
    "builds and runs the models: 2.4–6.4 s",
  ),
  (
    ("slow",),
    "tests/experiments/test_optimizers.py::test_every_optimizer_builds_and_steps[(adam|adamw|adamuon"
    "|clipped_sgd|muon|muon_clip|normuon|nsgd|scion|shampoo|soap|unconstrained_scion)]",
    "0.02–3.3 s (sgd and signum stay)",
  ),
  (
    ("slow",),
    "tests/experiments/test_seeds.py::test_(every_seed_runs_and_records_are_means_over_seeds"
    "|report_recreates_the_outputs_without_training_or_a_backend|report_of_a_partly_finished_directory"
    "|batches_follow_the_run_seed[digits])",
    "six tiny GPT runs (a module fixture) or a subprocess: 1–11 s",
  ),
  (
    ("slow",),
    "tests/experiments/test_tuning.py::test_(edge_extension_trains_past_the_edge_and_flags_the_bound"
    "|product_grid_names_each_point_and_reports_the_choice|rerun_and_report_reuse_the_tuning_without_training"
    "|a_changed_extend_resumes_the_same_directory)",
    "trains 4–5 tiny GPT runs (module fixtures): 1–25 s",
  ),
  (
    ("slow",),
    "tests/experiments/test_sizes.py::test_sizes_run_layout_resume_and_report",
    "a sizes run of 2 widths, 2 optimizers, baseline horizons: 8 tiny GPT runs",
  ),
  (
    ("slow",),
    "tests/experiments/test_study_configs.py::test_study_config_runs_in_a_few_steps",
    "each study config through the CLI in 3 steps: 6–14 tiny GPT runs",
  ),
  (
    ("slow",),
    "tests/experiments/test_tasks.py::test_more_eval_batches_than_validation_images",
    "loads scikit-learn's digits: 1.7 s",
  ),
  (
    ("slow",),
    "tests/experiments/test_train.py::test_(muon_clip_gets_the_models_logits"
    "|clipping_holds_the_reported_logits_near_tau)",
    "trains a 2-layer GPT: 1.2–14 s",
  ),
  (
    ("slow",),
    "tests/linalg/test_newton_schulz.py::test_(batched_leading_axes_equal_per_matrix"
    "|bf16_keeps_dtype_and_accuracy|cubic_converges_with_more_steps|documented_bands_hold"
    "|edge_inputs_stay_finite_with_and_without_eps|gram_without_restarts_strays_from_the_polynomial"
    "|jit_matches_eager|parity_with_optax_contrib|rank_deficient_and_zero_rows_stay_finite|svd_method_is_exact"
    "|vector_shaped_matrices|zero_is_zero)",
    "0.5–2.3 s",
  ),
  (
    ("slow",),
    "tests/linalg/test_newton_schulz.py::test_gram_iteration_as_accurate_as_plain[cubic-*]",
    "cubic's 20+ steps compile slowly: 0.1–1.7 s (jordan and polar_express 0.05–0.6 s)",
  ),
  (
    ("slow",),
    "tests/linalg/test_operator_norms.py::test_(identities_property"
    "|spectral_newton_schulz_close_to_exact|zero_rows_columns_and_matrices)",
    "hypothesis and Newton–Schulz: 0.6–7.5 s",
  ),
  (("slow",), "tests/linalg/test_operator_norms.py::test_identities[*-spectral]", "Newton–Schulz: 0.4–1.1 s"),
  (
    ("slow",),
    "tests/linalg/test_roots.py::test_(batched_and_scale_invariant_up_to_power"
    "|rank_deficient_and_zero_are_finite|newton_matches_eigh[10.0-2])",
    "1.2–2.0 s",
  ),
  (
    ("slow",),
    "tests/optimizers/test_contract.py::*[" + _OPTIMIZERS_BUT_SIGNUM + "]",
    "0.3–8.5 s (in a full run state_structure reuses trains_and_compiles_once's compilation)",
  ),
  (
    ("slow",),
    "tests/optimizers/test_contract.py::test_(trains_and_compiles_once|bf16_params_stay_bf16"
    "|zero_gradients_give_expected_finite_update|inject_hyperparams_matches_and_controls_lr|multisteps_accumulates"
    "|apply_if_finite_skips_nan_step|flax_nnx_optimizer)",
    "a compiled step per optimizer: 0.3–8.5 s",
  ),
  (
    ("slow",),
    "tests/optimizers/test_inject_hyperparams.py::test_(plain_inject_hyperparams_matches_the_optimizer"
    "|momentum_is_schedulable|injected_weight_decay_with_cautious_decay)",
    "plain and injected steps compiled per optimizer: 1.1–21 s",
  ),
  (
    ("slow",),
    "tests/optimizers/test_inject_hyperparams.py::test_callable_option_without_static_args_raises[(shampoo|soap)-*]",
    "Shampoo's and SOAP's init: up to 6 s",
  ),
  (
    ("slow",),
    "tests/optimizers/test_optax_contract.py::test_optax_contract[*-(adamuon|clipped_sgd|muon|muon_clip"
    "|normuon|nsgd|scion|shampoo|soap|unconstrained_scion)(|-*)]",
    "optax's contract per optimizer: 0.1–1.6 s each, 40 s for the 122 cases; signum's stay",
  ),
  (("slow",), "tests/optimizers/test_low_precision.py::test_half_precision_trains_as_float32", "1.8–4.3 s"),
  (
    ("slow",),
    "tests/optimizers/test_reliability.py::test_(random_trees_of_every_rank|resume_is_bit_exact"
    "|mixed_rank_tree_routes_each_leaf)",
    "0.6–11 s",
  ),
  (
    ("slow",),
    "tests/optimizers/test_reliability.py::test_finite_inputs_give_finite_updates["
    "(" + _OPTIMIZERS_BUT_SIGNUM + "-*|signum-bf16)]",
    "0.5–3.5 s (signum-f32 0.3 s stays)",
  ),
  (
    ("slow",),
    "tests/optimizers/test_schedules.py::test_(explicit_adam_rate_or_ratio_overrides"
    "|injected_learning_rate_reaches_adamw|schedule_shapes_every_leaf)",
    "1.6–3.8 s",
  ),
  (
    ("slow",),
    "tests/optimizers/test_update_rules.py::test_(preconditioners_decay_decoupled_and_partition_by_role"
    "|signum_nsgd_clipped)",
    "1.4–8.4 s",
  ),
  (("slow",), "tests/optimizers/test_update_rules.py::test_scion", "0.2–1.8 s"),
  (
    ("slow",),
    "tests/optimizers/test_weight_decay_mask.py::test_default_decays_matrices_not_vectors["
    "(adamuon|clipped_sgd|muon|normuon|nsgd|shampoo|soap)-*]",
    "0.5–3.2 s (signum's 0.3 s stay)",
  ),
  (
    ("slow",),
    "tests/optimizers/test_weight_decay_mask.py::test_(mask_decays_what_it_selects"
    "|muon_uses_its_own_labels_for_the_default)",
    "0.5–5.9 s",
  ),
  (("slow",), "tests/test_labels.py::test_(linen_roles|nnx_roles)", "build Flax models: 1.8–2.4 s"),
  (
    ("slow",),
    "tests/test_sharding_preconditioners.py::test_small_gradient_change_gives_small_update_change",
    "Shampoo and SOAP steps: 3.4–4.8 s",
  ),
  (("slow",), "tests/transforms/test_decay.py::test_cautious_decay_keeps_bf16", "1.0 s"),
  (("slow",), "tests/transforms/test_elementwise_transforms.py::test_clip_by_norm_matches_formula", "0.7 s"),
  (
    ("slow",),
    "tests/transforms/test_lmo_transform.py::test_(callable_norms_and_normalized_sign|inside_multi_transform"
    "|pytree_of_norms)",
    "1.3–1.9 s",
  ),
  (
    ("slow",),
    "tests/transforms/test_msign_transform.py::test_(bf16_leaf_stays_bf16"
    "|callable_dimension_numbers_and_svd_method|each_leaf_is_msign_of_its_view|masked_vectors_are_skipped)",
    "0.9–2.5 s",
  ),
  (
    ("slow",),
    "tests/transforms/test_muon_variants.py::test_(split_view_is_per_block|zero_and_extreme_updates_stay_finite)",
    "0.3–1.5 s",
  ),
  (
    ("slow",),
    "tests/transforms/test_partition.py::test_(extra_args_reach_inner_transforms_through_chain"
    "|extra_args_reach_qk_clip_in_a_partition|state_and_updates_equal_optax_partition)",
    "0.8–1.3 s",
  ),
  (
    ("slow",),
    "tests/transforms/test_qk_clip.py::test_(bad_calls_name_the_problem|each_head_logits_shrink_by_gamma"
    "|flat_and_fused_kernels_with_head_dim|grouped_fused_kernel|grouped_heads_must_divide"
    "|grouped_query_heads_take_all_of_gamma|stacked_layers)",
    "0.6–2.7 s",
  ),
  (
    ("slow",),
    "tests/transforms/test_shampoo.py::test_(blocks_are_preconditioned_independently"
    "|failure_guard_keeps_previous_root|graft_per_block_or_per_matrix"
    "|large_sides_skip_preconditioning_and_vectors_take_graft|matches_numpy_transcription"
    "|no_accumulation_is_msign|state_dtypes_and_structure_stable|zero_gradient_is_finite_zero)",
    "0.7–3.3 s",
  ),
  (
    ("slow",),
    "tests/transforms/test_shampoo_soap_inject.py::test_(inject_hyperparams_out_of_the_box_equals_plain"
    "|injected_shape_option_names_static_args|momentum_and_period_are_schedulable)",
    "0.6–6.8 s",
  ),
  (
    ("slow",),
    "tests/transforms/test_soap.py::test_(diagonal_gradients_equal_adam_from_step_two"
    "|faster_than_adam_on_ill_conditioned_least_squares|matches_numpy_transcription"
    "|second_moment_follows_eigenvalue_order_when_it_changes|state_stable_and_bf16"
    "|vectors_get_adam_and_long_sides_stay_unrotated|zero_gradients_are_finite_zero)",
    "1.0–7.5 s",
  ),
  (
    ("slow",),
    "tests/transforms/test_views.py::test_(per_head_split_matches_reshape_and_reduction_split"
    "|split_leaf_equals_separate_leaves|split_msign_is_msign_of_each_block)",
    "1.0–4.7 s",
  ),
  (
    ("slow",),
    "tests/transforms/test_views_inference.py::test_(multi_head_attention_kernels_are_their_dense_matrices"
    "|stacked_kernel_is_refused_with_the_view_to_pass|stacked_attention_model_trains_with_the_advised_view"
    "|scion_trains_multi_head_attention|muon_on_stacked_model_orthogonalises_each_layer|hf_gpt2_conv1d_view)",
    "train nnx models or import transformers: 2.2–8.9 s",
  ),
  (
    ("slow",),
    "tests/transforms/test_views_inference.py::test_stacked_nnx_model_raises_at_init",
    "0.02–3.6 s: the first of its cases builds the nnx model and an optimizer",
  ),
)


def _pattern_regex(pattern: str) -> re.Pattern:
  # "*" any text, "(a|b)" alternatives, the rest literal; a pattern also names
  # everything under it: "tests/x.py" its tests, "tests/x.py::test_f" its cases.
  regex = ""
  for token in re.split(r"(\*|\(|\)|\|)", pattern):
    regex += {"*": ".*", "(": "(?:", ")": ")", "|": "|"}.get(token, re.escape(token))
  return re.compile(regex + r"(?:(?:/|::|\[).*)?")


def _alternatives(pattern: str) -> list[str]:
  """The patterns without "(a|b)": one per choice of alternatives."""
  match = re.search(r"\(([^()]*)\)", pattern)
  if not match:
    return [pattern]
  return [
    p
    for choice in match.group(1).split("|")
    for p in _alternatives(pattern[: match.start()] + choice + pattern[match.end() :])
  ]


_MARK_REGEXES = [(markers, _pattern_regex(pattern)) for markers, pattern, _ in _MARKS]


@pytest.hookimpl(tryfirst=True)  # before -m selects by these markers
def pytest_collection_modifyitems(config, items):
  for item in items:
    for markers, regex in _MARK_REGEXES:
      if regex.fullmatch(item.nodeid):
        for marker in markers:
          item.add_marker(marker)
  # A renamed or removed test must not leave a stale pattern behind: each
  # alternative of each pattern matches a test when its file is collected
  # whole (not when node ids were named on the command line).
  if any("::" in arg for arg in config.args):
    return
  ids = [item.nodeid for item in items]
  files = {nodeid.split("::")[0] for nodeid in ids}
  for _, pattern, _ in _MARKS:
    for alternative in _alternatives(pattern):
      regex, file = _pattern_regex(alternative), _pattern_regex(alternative.split("::")[0])
      if any(file.fullmatch(f) for f in files) and not any(regex.fullmatch(i) for i in ids):
        raise pytest.UsageError(f"tests/conftest.py _MARKS: {alternative!r} matches no test; update the table")


def _deselects_every(config, markers: tuple[str, ...]) -> bool:
  """Whether ``-m`` deselects every test that carries ``markers``, whatever
  else it carries (decided only for expressions over registered markers)."""
  expression = config.option.markexpr
  names = {line.split(":")[0].strip() for line in config.getini("markers")}
  if not expression or not set(re.findall(r"\w+", expression)) <= names | {"and", "or", "not"}:
    return False
  code = compile(expression, "-m", "eval")
  others = sorted(names - set(markers))
  for values in itertools.product((False, True), repeat=len(others)):
    marked = collections.ChainMap(dict.fromkeys(markers, True), dict(zip(others, values)))
    if eval(code, {"__builtins__": {}}, marked):
      return False
  return True


# Core test files that build flax models or orbax checkpoints: not collected
# where the [experiments] extra is missing (the floors check of a core-only
# install, CONTRIBUTING.md), instead of failing at import.
_NEED_EXPERIMENTS = (
  "tests/test_labels.py",
  "tests/transforms/test_views_inference.py",
  "tests/transforms/test_stats_grads.py",
  "tests/optimizers/test_contract.py",
  "tests/optimizers/test_reliability.py",
  "tests/optimizers/test_schedules.py",
)


def pytest_ignore_collect(collection_path, config):
  # A file or directory the table marks whole, and -m deselects in full, is
  # not even imported: the fast subset then skips importing torch and the
  # reference packages (tests/parity) and transformers (test_labels_models),
  # 4–5 s per xdist worker (collection 8 s → 3.7 s).
  path = (
    collection_path.relative_to(config.rootpath).as_posix() if collection_path.is_relative_to(config.rootpath) else ""
  )
  for markers, pattern, _ in _MARKS:
    if pattern == path and _deselects_every(config, markers):
      return True
  if path in _NEED_EXPERIMENTS and importlib.util.find_spec("flax") is None:
    return True
  return None


def pytest_report_header(config):
  # Here, not in tests/parity/conftest.py: pytest asks only the conftest
  # files it loads at start-up for the header, and that one loads later.
  del config
  lines = [f"XLA_FLAGS: {os.environ['XLA_FLAGS']}"]
  try:
    from tests.parity.conftest import _MISSING
  except ImportError as error:  # MATOPT_PARITY=required with a package missing
    return [*lines, f"parity tests: {error}"]
  if _MISSING:
    lines.append(f"parity tests NOT collected: missing {', '.join(_MISSING)} (pip install -e '.[dev,parity]')")
  else:
    lines.append("parity tests collected: the [parity] extra's reference packages are installed")
  return lines

"""The main job: train small real models with several optimizers side by side.

``matopt run CONFIG`` (:mod:`matopt.cli`) reads a YAML config
(:mod:`~matopt.experiments.config`), builds its task
(:mod:`~matopt.experiments.tasks`) and optimizers
(:mod:`~matopt.experiments.optimizers`), trains each
(:mod:`~matopt.experiments.train`), reads the finished runs back
(:mod:`~matopt.experiments.collect`) and reports them
(:mod:`~matopt.experiments.report`); :mod:`~matopt.experiments.runner` ties
them together. Imported on demand: ``import matopt`` does not load it.
"""

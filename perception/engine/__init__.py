"""Training and evaluation: ``train(cfg) -> run_dir`` and ``evaluate(cfg, checkpoint) -> metrics``.

    from perception.engine.trainer import train
    from perception.engine.evaluator import evaluate

The package itself imports nothing: :mod:`perception.config` imports the engine's sections
(:mod:`perception.engine.config`) to assemble a :class:`~perception.config.Config`, and the trainer and evaluator
import :mod:`perception.config` to read one, so re-exporting them here would make the two import each other.
"""

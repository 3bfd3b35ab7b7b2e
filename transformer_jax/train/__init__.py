"""Training: state, optimiser + schedules, loss, pure train/eval steps, the experiment config, building,
evaluation, fine-tuning starts, and the loop."""

from transformer_jax.train.build import restore_for_eval
from transformer_jax.train.experiment import config_task, model_section, parse_attention, validate_config
from transformer_jax.train.logs import read_metrics
from transformer_jax.train.loop import NonFiniteError, train
from transformer_jax.train.loss import cross_entropy_sums
from transformer_jax.train.optim import make_optimizer, make_schedule
from transformer_jax.train.state import TrainState, create_train_state
from transformer_jax.train.step import StepConfig, make_eval_step, make_train_step

__all__ = ["NonFiniteError", "StepConfig", "TrainState", "config_task", "create_train_state", "cross_entropy_sums",
           "make_eval_step", "make_optimizer", "make_schedule", "make_train_step", "model_section",
           "parse_attention", "read_metrics", "restore_for_eval", "train", "validate_config"]

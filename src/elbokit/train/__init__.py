"""Training: ``fit()`` over torch.optim, β schedules, and exact-resume checkpoints."""

from elbokit.train.checkpoint import CheckpointError, load_checkpoint, load_model_state, save_checkpoint
from elbokit.train.loop import FitResult, TrainingDiverged, fit, resolve_device
from elbokit.train.objective import evaluate_bound, training_bound
from elbokit.train.schedules import Schedule, check_reaches_target, parse_schedule

__all__ = [
    "CheckpointError",
    "FitResult",
    "Schedule",
    "TrainingDiverged",
    "check_reaches_target",
    "evaluate_bound",
    "fit",
    "load_checkpoint",
    "load_model_state",
    "parse_schedule",
    "resolve_device",
    "save_checkpoint",
    "training_bound",
]

"""Training: ``fit()`` over torch.optim, β schedules, and exact-resume checkpoints."""

from elbokit.errors import TrainingDiverged
from elbokit.train.checkpoint import BEST, CheckpointError, load_checkpoint, load_model_state, save_checkpoint
from elbokit.train.epochs import resolve_device
from elbokit.train.loop import FitResult, fit
from elbokit.train.objective import evaluate_bound, training_bound
from elbokit.train.schedules import Schedule, check_reaches_target, parse_schedule

__all__ = [
    "BEST",
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

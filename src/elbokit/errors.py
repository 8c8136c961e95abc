"""Exceptions shared across the layers (and caught by the command line without importing the trainer)."""


class TrainingDiverged(RuntimeError):
    """A non-finite bound or gradient: training stopped, the last good checkpoint is kept."""

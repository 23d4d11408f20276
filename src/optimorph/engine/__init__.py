"""The compiled trainer and what it returns."""

from optimorph.engine.result import TrainResult
from optimorph.engine.trainer import TrainingError, train

__all__ = ["train", "TrainResult", "TrainingError"]

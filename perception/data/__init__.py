"""Data: the Sample/Batch contracts, datasets, transforms, collate and samplers."""
from perception.data.batch import IGNORE_INDEX, Batch, collate, sample_tasks

__all__ = ["IGNORE_INDEX", "Batch", "collate", "sample_tasks"]

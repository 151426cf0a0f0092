"""Dataset readers: each returns raw samples (numpy, original size) and names the tasks and classes it labels.

The registry of ``DatasetConfig.type`` names is ``perception.data.build.DATASETS``; the readers are imported on
first use so that a dataset's optional dependencies load only when it is used.
"""
from perception.data.datasets.base import BaseDataset

__all__ = ["BaseDataset"]

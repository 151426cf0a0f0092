"""Data: the Sample/Batch contracts, datasets, transforms, collate and samplers.

``build_dataset`` / ``build_dataloader`` turn a ``DataConfig`` into transformed samples and ``Batch`` loaders.
"""
from perception.data.batch import IGNORE_INDEX, LABEL_KEYS, Batch, collate, register_label, sample_labels
from perception.data.build import DATASETS, build_dataloader, build_dataset, dataset_class, register_dataset
from perception.data.io import DataError
from perception.data.sampler import MixedSampler, ShardSampler, mixing_probabilities
from perception.data.transforms import JointTransform, fitted_size

__all__ = ["DATASETS", "IGNORE_INDEX", "Batch", "DataError", "JointTransform", "MixedSampler", "ShardSampler",
           "build_dataloader", "build_dataset", "collate", "dataset_class", "fitted_size", "mixing_probabilities",
           "register_dataset", "register_label", "sample_labels", "LABEL_KEYS"]

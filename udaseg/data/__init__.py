"""Datasets, transforms and the paired source/target data module."""

from udaseg.data.base import ImageLabelDataset, SegmentationDataset
from udaseg.data.classes import CITYSCAPES_CLASSES, CITYSCAPES_ID_TO_TRAIN_ID, IGNORE_INDEX
from udaseg.data.datamodule import UDADataModule
from udaseg.data.streams import InfiniteShardedSampler
from udaseg.data.transforms import Augmentation, TransformedDataset, denormalize, normalize

__all__ = [
    "Augmentation", "CITYSCAPES_CLASSES", "CITYSCAPES_ID_TO_TRAIN_ID", "IGNORE_INDEX",
    "ImageLabelDataset", "InfiniteShardedSampler", "SegmentationDataset",
    "TransformedDataset", "UDADataModule", "denormalize", "normalize",
]

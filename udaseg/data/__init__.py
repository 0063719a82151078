"""Datasets, transforms and the paired source/target data module."""

from udaseg.data.base import ImageFolder, ImageLabelDataset, SegmentationDataset
from udaseg.data.cityscapes import Cityscapes
from udaseg.data.classes import CITYSCAPES_CLASSES, CITYSCAPES_ID_TO_TRAIN_ID, IGNORE_INDEX
from udaseg.data.crosscity import CROSSCITY_13, CrossCity
from udaseg.data.datamodule import UDADataModule
from udaseg.data.donors import ClassDonors
from udaseg.data.folder import LabelledFolder
from udaseg.data.gta5 import GTA5
from udaseg.data.photometric import StrongView
from udaseg.data.rare_class_sampling import RareClassSampler, RareClassSampling
from udaseg.data.streams import InfiniteShardedSampler
from udaseg.data.synthetic import SYNTHETIC_CLASSES, SyntheticStreets
from udaseg.data.synthia import SYNTHIA_13, SYNTHIA_16, SynthiaRandCityscapes
from udaseg.data.transforms import Augmentation, TransformedDataset, denormalize, normalize

__all__ = [
    "CROSSCITY_13", "Cityscapes", "CrossCity", "GTA5", "SYNTHIA_13", "SYNTHIA_16",
    "SynthiaRandCityscapes", "Augmentation", "ImageFolder", "CITYSCAPES_CLASSES",
    "CITYSCAPES_ID_TO_TRAIN_ID", "ClassDonors", "IGNORE_INDEX",
    "ImageLabelDataset", "InfiniteShardedSampler", "LabelledFolder", "RareClassSampler",
    "RareClassSampling",
    "SYNTHETIC_CLASSES", "SegmentationDataset", "StrongView",
    "SyntheticStreets", "TransformedDataset", "UDADataModule", "denormalize", "normalize",
]

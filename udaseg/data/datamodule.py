"""The one data module: a labelled source stream paired with an unlabelled target stream.

Training batches look like `{"source": {"image", "label", "name"}, "target": {"image", "name"}}`;
the target entry is missing when no target set is given (source-only / oracle runs) and also
holds "strong_image" with `target_strong_view` (TUFL). Validation and test batches are plain
`{"image", "label", "name"}` from labelled target sets.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from pytorch_lightning.utilities import CombinedLoader, rank_zero_warn
from torch.utils.data import DataLoader, Sampler, SequentialSampler

from udaseg.data.base import SegmentationDataset, check_same_classes
from udaseg.data.classes import IGNORE_INDEX
from udaseg.data.donors import ClassDonors
from udaseg.data.photometric import StrongView
from udaseg.data.rare_class_sampling import RareClassSampler, RareClassSampling, class_pixel_counts
from udaseg.data.streams import InfiniteShardedSampler, SameSizeBatchSampler
from udaseg.data.transforms import Augmentation, Normalization, TransformedDataset

# Distinct seed offsets so the source, target and donor streams never share an order.
_STREAM_SEEDS = {"source": 0, "target": 1, "donors": 2}


class UDADataModule(pl.LightningDataModule):
    """Pairs source and target streams for training; serves labelled target val/test sets.

    Args:
        source: labelled training set (for an oracle run: the labelled target train set).
        target: unlabelled training set of the target domain; its labels are never loaded.
        val: labelled evaluation set of the target domain used during `fit` and `validate`.
        test: labelled held-out set for `test` (defaults to `val`).
        predict: images to segment with `udaseg predict` (e.g. `udaseg.data.ImageFolder`).
        source_augmentation / target_augmentation: per-stream augmentation.
        eval_augmentation: evaluation-time resize; labels stay at full resolution.
        normalization: "imagenet" (torchvision weights), "caffe_bgr" (official DeepLab init)
            or "signed", (x - 127) / 128 (TensorFlow-converted EfficientNet-Lite weights).
            Recorded in run checkpoints; a method whose weights expect another refuses the
            run when it sets up (`udaseg.models.weights.check_input_normalization`).
        batch_size: source images per iteration *per process*: under DDP an iteration sees
            `batch_size x devices x num_nodes` source images, so a run on more GPUs trains
            with a larger effective batch. target_batch_size defaults to the same.
        eval_batch_size: images per evaluation batch (per process).
        num_workers: DataLoader workers per stream.
        pin_memory: page-locked batches, so host-to-GPU copies run asynchronously; None = when
            CUDA is available.
        persistent_workers: keep each loader's workers alive between passes (evaluation
            loaders otherwise start new workers, and re-open their files, at every validation).
        prefetch_factor: batches each worker prepares ahead; None = PyTorch's default (2).
        donor_workers: threads preparing the source crops CIM's long-tail pasting cuts rare
            classes from (`paste_donor`); None = 1 with `num_workers` > 0, else 0 (prepared
            in the training process when asked for). The crops do not depend on it.
        rare_class_sampling: draw source images by DAFormer's rare class sampling instead of
            uniform passes (`udaseg.data.RareClassSampling`); None = uniform. Its
            `min_crop_ratio` runs the source augmentation again (at most 10 times) until the
            crop holds more than `min_pixels * min_crop_ratio` pixels of the drawn class
            (0 = one run). The source augmentation's `cat_max_ratio` (crops re-drawn while
            one class dominates them) applies inside each of those runs, as in DAFormer.
        seed: shuffling and augmentation seed (also mixed with the stream and the rank).
        target_strong_view: a second, photometrically augmented view of each target crop for
            consistency methods (TUFL); the settings live in the data config
            (`udaseg.data.StrongView`; `target_strong_view: {}` = the official TUFL settings).
            Target batches then also hold "strong_image", the same crop as "image". None = off.
    """

    def __init__(
        self,
        source: SegmentationDataset,
        target: Optional[SegmentationDataset] = None,
        val: Optional[SegmentationDataset] = None,
        test: Optional[SegmentationDataset] = None,
        predict: Optional[SegmentationDataset] = None,
        source_augmentation: Augmentation = Augmentation(),
        target_augmentation: Augmentation = Augmentation(),
        eval_augmentation: Augmentation = Augmentation(resize_label=False),
        normalization: Normalization = "imagenet",
        batch_size: int = 1,
        target_batch_size: Optional[int] = None,
        eval_batch_size: int = 1,
        num_workers: int = 0,
        pin_memory: Optional[bool] = None,
        persistent_workers: bool = True,
        prefetch_factor: Optional[int] = None,
        donor_workers: Optional[int] = None,
        seed: int = 0,
        rare_class_sampling: Optional[RareClassSampling] = None,
        target_strong_view: Optional[StrongView] = None,
    ) -> None:
        super().__init__()
        streams = [("source", source)] + [(key, dataset) for key, dataset in
                                          (("target", target), ("val", val), ("test", test))
                                          if dataset is not None]
        self.class_names = check_same_classes(streams)
        for key, dataset in streams:
            if key != "target" and not dataset.has_labels:
                raise ValueError(f"data.{key} ({type(dataset).__name__}) has no labels, "
                                 "but that stream needs them")
        self.source, self.target, self.val, self.test = source, target, val, test
        self.predict = predict
        self.source_augmentation = source_augmentation
        self.target_augmentation = target_augmentation
        self.eval_augmentation = eval_augmentation
        self.normalization = normalization
        # In checkpoints (Lightning's datamodule hyperparameters): a run started from one
        # (`weights.init_checkpoint`) knows what input its weights expect, and an evaluation
        # of one records the seed its weights were trained with.
        self.save_hyperparameters({"normalization": normalization, "seed": seed})
        self.batch_size = batch_size
        self.target_batch_size = target_batch_size or batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        if prefetch_factor is not None and prefetch_factor < 1:
            raise ValueError(f"data.prefetch_factor must be >= 1, got {prefetch_factor}")
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.persistent_workers = persistent_workers
        self.prefetch_factor = prefetch_factor
        if donor_workers is not None and donor_workers < 0:
            raise ValueError(f"data.donor_workers must be >= 0, got {donor_workers}")
        self.donor_workers = donor_workers
        self.seed = seed
        self.rare_class_sampling = rare_class_sampling
        self.target_strong_view = target_strong_view
        self._source_pixel_counts: Optional[np.ndarray] = None
        self._donors: Optional[ClassDonors] = None
        # Draws each rank's training streams made before this fit (restored from a checkpoint)
        # and the drawn iterations (`_iteration`) behind them: where a resumed run's streams go on.
        self._resumed_draws: dict[str, int] = {}
        self._resumed_step = 0

    # Linked into the method's constructor by the CLI, so they are written once, here.
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def palette(self) -> np.ndarray:
        """(C, 3) RGB class colours (of the source set: every stream has its classes)."""
        return self.source.palette

    @property
    def ignore_index(self) -> int:
        return IGNORE_INDEX

    @property
    def eval_subsets(self) -> dict[str, list[int]]:
        evaluation_set = self.val or self.test or self.source
        subsets = dict(getattr(evaluation_set, "eval_subsets", {}) or {})
        return subsets or {"mIoU": list(range(self.num_classes))}

    def _rank_and_world(self) -> tuple[int, int]:
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def _method(self) -> Optional[pl.LightningModule]:
        """The method this module feeds, when a trainer connects them."""
        return getattr(self.trainer, "lightning_module", None) if self.trainer else None

    def _iteration(self) -> int:
        """Iterations that drew a batch of every stream so far. Not `global_step` alone: an
        iteration skipped for a non-finite loss draws its batches but makes no optimiser step
        (the method's `drawn_iterations` counts both)."""
        if self.trainer is None:
            return 0
        return int(getattr(self._method(), "drawn_iterations", self.trainer.global_step))

    @property
    def draws_target(self) -> bool:
        """Whether training draws target batches: there is a target set, and the method reads
        it (`reads_target`; source-only does not, and rendering or decoding its target
        batches would only cost time)."""
        return self.target is not None and getattr(self._method(), "reads_target", True)

    def stream_batch_sizes(self) -> dict[str, int]:
        sizes = {"source": self.batch_size}
        if self.draws_target:
            sizes["target"] = self.target_batch_size
        return sizes

    def stream_draws(self) -> dict[str, int]:
        """Samples each training stream of this rank has drawn so far (every iteration draws
        one batch of each; ranks draw alike)."""
        iterations = self._iteration() - self._resumed_step
        return {key: self._resumed_draws.get(key, 0) + iterations * size
                for key, size in self.stream_batch_sizes().items()}

    def state_dict(self) -> dict:
        """Checkpointed: where the training streams stand, for an exact resume (the donor
        positions of every rank: each rank pastes its own draws)."""
        _, world_size = self._rank_and_world()
        donor_positions = [self._donors.state_dict() if self._donors is not None else {}]
        if world_size > 1 and torch.distributed.is_initialized():
            gathered: list = [None] * world_size
            torch.distributed.all_gather_object(gathered, donor_positions[0])
            donor_positions = gathered
        return {"stream_draws": self.stream_draws(), "iteration": self._iteration(),
                "world_size": world_size, "donor_positions": donor_positions}

    def load_state_dict(self, state: dict) -> None:
        rank, world_size = self._rank_and_world()
        if state.get("world_size", world_size) != world_size:
            rank_zero_warn(
                f"resuming a run of {state['world_size']} processes with {world_size}: each "
                "process's streams go on from the same position, but shards differ, so the "
                "data order is not the one the original run would have seen")
        self._resumed_draws = dict(state.get("stream_draws", {}))
        self._resumed_step = int(state.get("iteration", 0))
        donor_positions = state.get("donor_positions") or [{}]
        self.donors.load_state_dict(donor_positions[rank % len(donor_positions)])

    def stream_seed(self, key: str) -> int:
        """The seed of one training stream ("source", "target", "donors"), the same on every
        rank (the shuffling: ranks take disjoint shards of one order)."""
        return self.seed * 7919 + _STREAM_SEEDS[key]

    def rank_seed(self, key: str) -> int:
        """The seed of one training stream on this rank (its augmentation draws)."""
        rank, _ = self._rank_and_world()
        return self.stream_seed(key) * 997 + rank

    def loader_options(self) -> dict:
        """Worker, pinning and prefetch settings shared by every DataLoader of the module."""
        options = {"num_workers": self.num_workers, "pin_memory": self.pin_memory}
        if self.num_workers > 0:   # DataLoader refuses these without workers
            options["persistent_workers"] = self.persistent_workers
            options["prefetch_factor"] = self.prefetch_factor
        return options

    def stream_loader(self, key: str, dataset: SegmentationDataset, augmentation: Augmentation,
                      batch_size: int, keep_label: bool,
                      strong_view: Optional[StrongView] = None) -> DataLoader:
        rank, world_size = self._rank_and_world()
        crop_pixels = (self.rare_class_sampling.crop_pixels
                       if key == "source" and self.rare_class_sampling is not None else None)
        transformed = TransformedDataset(dataset, augmentation, self.normalization, keep_label,
                                         strong_view, class_crop_pixels=crop_pixels)
        augmentation_seed = self.rank_seed(key)
        transformed.reseed(augmentation_seed)
        sampler = self.stream_sampler(key, dataset, world_size, rank, self.stream_seed(key),
                                      start=self.stream_draws()[key])
        return DataLoader(transformed, batch_size=batch_size, sampler=sampler, drop_last=True,
                          generator=torch.Generator().manual_seed(augmentation_seed),
                          **self.loader_options())

    def stream_sampler(self, key: str, dataset: SegmentationDataset, world_size: int, rank: int,
                       seed: int, start: int = 0) -> InfiniteShardedSampler:
        """Uniform passes, or rare class sampling for the source stream when configured."""
        if key != "source" or self.rare_class_sampling is None:
            return InfiniteShardedSampler(len(dataset), num_replicas=world_size, rank=rank,
                                          seed=seed, start=start)
        return RareClassSampler(self.source_pixel_counts(), self.rare_class_sampling,
                                num_replicas=world_size, rank=rank, seed=seed, start=start)

    def source_pixel_counts(self) -> np.ndarray:
        """(num_images, C) labelled pixels of each class in each source image: one pass over
        the source labels per run, shared by rare class sampling and methods that weight
        classes by their source frequency (TUFL)."""
        if self._source_pixel_counts is None:
            rank, _ = self._rank_and_world()
            self._source_pixel_counts = class_pixel_counts(self.source, self.num_classes,
                                                           progress=rank == 0)
        return self._source_pixel_counts

    def class_holders(self, class_id: int) -> np.ndarray:
        """Indices of the source images with at least one labelled pixel of `class_id` (the
        per-class index of CIM's long-tail pasting; built once, with `source_pixel_counts`)."""
        return np.flatnonzero(self.source_pixel_counts()[:, class_id] > 0)

    @property
    def donors(self) -> ClassDonors:
        """This rank's per-class donor streams (`udaseg.data.ClassDonors`), made on first use."""
        if self._donors is None:
            workers = self.donor_workers
            if workers is None:
                workers = 1 if self.num_workers > 0 else 0
            self._donors = ClassDonors(
                lambda: TransformedDataset(self.source, self.source_augmentation,
                                           self.normalization, keep_label=True),
                self.class_holders,
                seed=self.rank_seed("donors"), workers=workers)
        return self._donors

    def paste_donor(self, class_id: int) -> Optional[dict]:
        """The next source training crop (source augmentation, "image" and "label") that
        contains `class_id`, for long-tail pasting: a random image of the class, cropped anew
        until the crop holds the class, at most 10 times (the official code tries up to 1000
        times; DAFormer's rare-class crops 10). None when no source image has the class or no
        crop caught it. Prepared ahead in `donor_workers` threads (`ClassDonors`)."""
        return self.donors.next(class_id)

    def teardown(self, stage: str) -> None:
        if self._donors is not None:
            self._donors.close()

    def train_dataloader(self) -> CombinedLoader:
        loaders = {"source": self.stream_loader("source", self.source, self.source_augmentation,
                                                self.batch_size, keep_label=True)}
        if self.draws_target:
            loaders["target"] = self.stream_loader("target", self.target,
                                                   self.target_augmentation,
                                                   self.target_batch_size, keep_label=False,
                                                   strong_view=self.target_strong_view)
        # Both streams are endless, so "min_size" simply zips them.
        return CombinedLoader(loaders, mode="min_size")

    def eval_loader(self, key: str, dataset: Optional[SegmentationDataset]) -> DataLoader:
        if dataset is None:
            raise ValueError(f"no data.{key} set is configured")
        transformed = TransformedDataset(dataset, self.eval_augmentation, self.normalization,
                                         label_dtype=torch.uint8)
        return DataLoader(transformed, batch_size=self.eval_batch_size,
                          sampler=self.eval_sampler(transformed), shuffle=False,
                          **self.loader_options())

    def eval_sampler(self, dataset: TransformedDataset) -> Sampler[int]:
        """Every image exactly once, in order; under DDP each rank a disjoint part, even when
        the set does not divide by the world size (the default DistributedSampler pads and
        skews the IoU)."""
        rank, world_size = self._rank_and_world()
        if world_size > 1:
            return UnrepeatedDistributedSampler(dataset, num_replicas=world_size, rank=rank,
                                                shuffle=False)
        return SequentialSampler(dataset)

    def val_dataloader(self) -> DataLoader:
        return self.eval_loader("val", self.val)

    def test_dataloader(self) -> DataLoader:
        return self.eval_loader("test", self.test or self.val)

    def predict_dataloader(self) -> DataLoader:
        """Batches of images of one original size (predictions are written at that size):
        grouped by `image_sizes()` when the dataset reads them from the file headers, else one
        image per batch."""
        if self.predict is None:
            raise ValueError("no data.predict set is configured")
        transformed = TransformedDataset(self.predict, self.eval_augmentation,
                                         self.normalization, keep_label=False)
        sampler = self.eval_sampler(transformed)
        if not hasattr(self.predict, "image_sizes"):
            return DataLoader(transformed, batch_size=1, sampler=sampler,
                              **self.loader_options())
        batches = SameSizeBatchSampler(sampler, self.eval_batch_size,
                                       sizes=self.predict.image_sizes())
        return DataLoader(transformed, batch_sampler=batches, **self.loader_options())

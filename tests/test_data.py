"""Paired loader, streams, transforms."""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import albumentations as A
import numpy as np
import pytest
import torch

from tests.helpers import TinyDataset, first_training_batch, fit, tiny_data, tiny_method
from udaseg.data import (
    Augmentation,
    ImageLabelDataset,
    InfiniteShardedSampler,
    SegmentationDataset,
    UDADataModule,
    normalize,
)
from udaseg.data.transforms import CAFFE_MEAN_BGR, CategoryCappedCrop, TransformedDataset
from udaseg.methods import MinEnt, SourceOnly


def take(loader, count):
    """First `count` training batches (CombinedLoader yields (batch, index, loader index))."""
    iterator = iter(loader)
    return [next(iterator)[0] for _ in range(count)]


def batch_names(batches, stream):
    return [name for batch in batches for name in batch[stream]["name"]]


def test_streams_cycle_independently_and_target_has_no_labels():
    data = UDADataModule(source=TinyDataset(3, "s"), target=TinyDataset(5, "t"), batch_size=1)
    batches = take(data.train_dataloader(), 15)
    source, target = batch_names(batches, "source"), batch_names(batches, "target")
    # Each stream goes through full passes of its own length: 5 passes of 3, 3 passes of 5.
    for names, size in ((source, 3), (target, 5)):
        passes = [names[start:start + size] for start in range(0, 15, size)]
        assert all(sorted(chunk) == sorted(set(chunk)) and len(set(chunk)) == size
                   for chunk in passes)
        assert len({tuple(chunk) for chunk in passes}) > 1, "each pass must be reshuffled"
    assert "label" not in batches[0]["target"]
    assert set(batches[0]["target"]) == {"image", "name", "original_size"}
    assert batches[0]["source"]["label"].dtype == torch.long


def test_source_and_target_orders_are_independent():
    data = UDADataModule(source=TinyDataset(6, "x"), target=TinyDataset(6, "x"), batch_size=1)
    batches = take(data.train_dataloader(), 6)
    assert batch_names(batches, "source") != batch_names(batches, "target")


def test_two_ranks_get_disjoint_shards_of_each_stream():
    shards = {}
    for rank in (0, 1):
        data = UDADataModule(source=TinyDataset(8, "s"), target=TinyDataset(10, "t"),
                             batch_size=1, seed=3)
        data.trainer = SimpleNamespace(global_rank=rank, world_size=2, global_step=0)
        batches = take(data.train_dataloader(), 4)
        shards[rank] = (set(batch_names(batches, "source")), set(batch_names(batches, "target")))
    assert not shards[0][0] & shards[1][0]
    assert not shards[0][1] & shards[1][1]
    assert len(shards[0][0] | shards[1][0]) == 8
    assert len(shards[0][1] | shards[1][1]) == 8


def test_sampler_pads_uneven_passes_and_has_no_length():
    per_rank = [InfiniteShardedSampler(5, num_replicas=2, rank=rank, seed=1) for rank in (0, 1)]
    order = per_rank[0].pass_order(0)
    assert len(order) == 6 and sorted(order[:5].tolist()) == [0, 1, 2, 3, 4]
    # Within one pass, the ranks' shards cover every index and overlap only in the padding.
    shards = [set(order[rank::2].tolist()) for rank in (0, 1)]
    assert shards[0] | shards[1] == {0, 1, 2, 3, 4} and len(shards[0] & shards[1]) <= 1
    with pytest.raises(TypeError):
        len(per_rank[0])


def test_same_seed_gives_same_batches_and_other_seed_differs():
    def first_images(seed):
        data = UDADataModule(source=TinyDataset(9, "s"), batch_size=2, seed=seed,
                             source_augmentation=Augmentation(crop=(6, 6), hflip=True))
        return torch.stack([batch["source"]["image"] for batch in take(data.train_dataloader(), 3)])

    assert torch.equal(first_images(0), first_images(0))
    assert not torch.equal(first_images(0), first_images(1))


def test_crop_pads_labels_with_ignore_and_images_with_zero():
    dataset = TransformedDataset(TinyDataset(1, "s", height=4, width=4),
                                 Augmentation(crop=(8, 8)), "imagenet")
    label = dataset[0]["label"]
    assert label.shape == (8, 8)
    assert (label == 255).sum() == 64 - 16 and (label == 0).sum() == 16


def test_eval_resize_keeps_full_resolution_labels():
    dataset = TransformedDataset(TinyDataset(1, "v", height=8, width=12),
                                 Augmentation(resize=(4, 6), resize_label=False), "imagenet")
    item = dataset[0]
    assert item["image"].shape == (3, 4, 6) and item["label"].shape == (8, 12)
    with pytest.raises(ValueError, match="resize_label=False"):
        Augmentation(crop=(4, 4), resize_label=False)


def test_caffe_normalization_is_bgr_mean_subtraction():
    image = np.zeros((1, 1, 3), dtype=np.uint8)
    image[0, 0] = (10, 20, 30)  # RGB
    tensor = normalize(image, "caffe_bgr")
    expected = np.array([30, 20, 10], dtype=np.float32) - CAFFE_MEAN_BGR
    assert torch.allclose(tensor[:, 0, 0], torch.from_numpy(expected))
    imagenet = normalize(image, "imagenet")
    assert torch.allclose(imagenet[:, 0, 0], torch.tensor(
        [(10 / 255 - 0.485) / 0.229, (20 / 255 - 0.456) / 0.224, (30 / 255 - 0.406) / 0.225]),
        atol=1e-5)


def test_class_mismatch_between_streams_is_a_clear_error():
    other = TinyDataset(3, "t")
    other.class_names = ("x", "y", "z")
    with pytest.raises(ValueError, match="data.target"):
        UDADataModule(source=TinyDataset(3, "s"), target=other)


def test_linked_attributes():
    data = UDADataModule(source=TinyDataset(3, "s"), val=TinyDataset(2, "v"))
    assert data.num_classes == 3 and data.ignore_index == 255
    assert data.eval_subsets == {"mIoU": [0, 1, 2], "mIoU-2": [0, 1]}


def test_batch_size_is_per_process_under_ddp():
    """`batch_size` images per rank and iteration: 2 ranks x batch 3 = 6 source images."""
    for rank in (0, 1):
        data = UDADataModule(source=TinyDataset(12, "s"), target=TinyDataset(12, "t"),
                             batch_size=3, target_batch_size=2)
        data.trainer = SimpleNamespace(global_rank=rank, world_size=2, global_step=0)
        batch = take(data.train_dataloader(), 1)[0]
        assert len(batch["source"]["name"]) == 3 and len(batch["target"]["name"]) == 2


def test_abstract_dataset_bases_cannot_be_chosen():
    assert inspect.isabstract(SegmentationDataset) and inspect.isabstract(ImageLabelDataset)
    with pytest.raises(TypeError, match="abstract"):
        ImageLabelDataset("anywhere")


def test_predict_batches_one_image_when_the_dataset_cannot_tell_its_sizes():
    data = UDADataModule(source=TinyDataset(3, "s"), predict=TinyDataset(3, "p"),
                         eval_batch_size=2)
    assert [batch["name"] for batch in data.predict_dataloader()] == [["p0"], ["p1"], ["p2"]]


def test_loader_options_reach_every_dataloader():
    """Pinning, persistent workers and prefetch (with workers) are what each loader gets."""
    module = tiny_data(num_workers=2, pin_memory=True, persistent_workers=False,
                       prefetch_factor=4)
    module.predict = module.val
    train = module.train_dataloader().iterables
    loaders = [train["source"], train["target"], module.val_dataloader(),
               module.test_dataloader(), module.predict_dataloader()]
    for loader in loaders:
        assert (loader.num_workers, loader.pin_memory, loader.persistent_workers,
                loader.prefetch_factor) == (2, True, False, 4)
    default = tiny_data(num_workers=1)
    assert default.val_dataloader().persistent_workers
    assert not tiny_data().val_dataloader().persistent_workers   # no workers: nothing to keep
    with pytest.raises(ValueError, match="data.prefetch_factor must be >= 1"):
        tiny_data(prefetch_factor=0)


def test_evaluation_labels_are_uint8_and_training_labels_int64():
    """Evaluation batches carry uint8 labels (the same ids as the training pipeline's int64
    ones), which the confusion matrix reads directly; wider ids are refused by name."""
    module = tiny_data()
    source, _ = first_training_batch()
    evaluation = next(iter(module.val_dataloader()))
    assert source["label"].dtype == torch.int64 and evaluation["label"].dtype == torch.uint8
    training_view = TransformedDataset(module.val, module.eval_augmentation, "imagenet")
    assert torch.equal(evaluation["label"][0].long(), training_view[0]["label"])

    class WideIds(torch.utils.data.Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, index):
            return {"image": np.zeros((4, 4, 3), np.uint8), "name": "wide",
                    "label": np.full((4, 4), 300, np.int32)}
    with pytest.raises(ValueError, match="'wide' has ids outside 0..255"):
        TransformedDataset(WideIds(), Augmentation(), "imagenet", label_dtype=torch.uint8)[0]


def test_a_method_that_ignores_the_target_gets_no_target_batches():
    """Source-only with a target set in its config: the data module makes no target batches
    (they would cost time and train nothing); a method that reads the target gets them."""
    for method_class, draws_target in ((SourceOnly, False), (MinEnt, True)):
        data = tiny_data()
        fit(tiny_method(method_class), 1, data)
        assert data.draws_target is draws_target
        batch, _, _ = next(iter(data.train_dataloader()))
        assert ("target" in batch) is draws_target
        assert ("target" in data.state_dict()["stream_draws"]) is draws_target


def test_cat_max_ratio_accepts_crops_like_mmseg():
    crop = CategoryCappedCrop(2, 2, cat_max_ratio=0.75)
    assert crop.accepts(np.array([[0, 0], [1, 1]]))           # 50 %
    assert not crop.accepts(np.array([[0, 0], [0, 1]]))       # 75 % is not < 75 %
    assert not crop.accepts(np.array([[0, 0], [0, 0]]))       # one class
    assert not crop.accepts(np.array([[0, 255], [255, 255]]))  # one class besides the ignore
    assert not crop.accepts(np.full((2, 2), 255))             # nothing labelled
    assert CategoryCappedCrop(2, 2, cat_max_ratio=0.8).accepts(np.array([[0, 0], [0, 1]]))


def test_cat_max_ratio_redraws_up_to_ten_times_from_the_crop_stream():
    def crops(transform, label, calls):
        transform.set_random_seed(5)
        params = {"shape": (32, 32)}
        return [transform.get_params_dependent_on_data(params, {"mask": label})["crop_coords"]
                for _ in range(calls)]

    plain = crops(A.RandomCrop(4, 4), np.zeros((32, 32), np.uint8), 11)
    # Every crop of a one-class label is rejected: the 11th draw is kept.
    assert crops(CategoryCappedCrop(4, 4, 0.75), np.zeros((32, 32), np.uint8), 1) == plain[-1:]
    # The first crop of a two-class checkerboard is accepted: the same draw as a plain crop.
    checkerboard = (np.indices((32, 32)).sum(0) % 2).astype(np.uint8)
    assert crops(CategoryCappedCrop(4, 4, 0.75), checkerboard, 11) == plain


def test_cat_max_ratio_rejects_crops_one_class_dominates():
    class Corner(TinyDataset):
        def __getitem__(self, index: int) -> dict:
            label = np.zeros((self.height, self.width), np.uint8)
            label[:6, :6] = 1
            return {**super().__getitem__(index), "label": label}

    def mixed_crops(cat_max_ratio):
        dataset = TransformedDataset(Corner(1, "c", height=24, width=24),
                                     Augmentation(crop=(8, 8), cat_max_ratio=cat_max_ratio),
                                     "imagenet")
        dataset.reseed(0)
        labels = torch.stack([dataset[0]["label"] for _ in range(300)])
        shares = (labels == 1).float().mean((1, 2))
        return ((shares > 0.25) & (shares < 0.75)).float().mean().item()

    # 10 of the 17x17 crop positions (3.5 %) are mixed enough; up to 11 draws find one ~32 %.
    assert mixed_crops(None) < 0.1 and mixed_crops(0.75) > 0.2


def test_cat_max_ratio_none_leaves_every_draw_unchanged_and_bad_values_fail():
    default = Augmentation(crop=(6, 6), hflip=True)
    assert default.cat_max_ratio is None
    assert [type(op) for op in default.build()] == [A.PadIfNeeded, A.RandomCrop,
                                                   A.HorizontalFlip]
    # With a crop that passes at once (a checkerboard label), the check draws nothing more:
    # the same samples.
    class Checkerboard(TinyDataset):
        def __getitem__(self, index: int) -> dict:
            label = (np.indices((self.height, self.width)).sum(0) % 2).astype(np.uint8)
            return {**super().__getitem__(index), "label": label}

    source = Checkerboard(1, "s", height=16, width=16)
    same = []
    for augmentation in (default, Augmentation(crop=(6, 6), hflip=True, cat_max_ratio=0.99)):
        dataset = TransformedDataset(source, augmentation, "imagenet")
        dataset.reseed(3)
        same.append([dataset[(position, 0)]["image"] for position in range(5)])
    assert all(torch.equal(a, b) for a, b in zip(*same, strict=True))
    with pytest.raises(ValueError, match="cat_max_ratio needs `crop`"):
        Augmentation(cat_max_ratio=0.75)
    with pytest.raises(ValueError, match=r"cat_max_ratio must be in \(0, 1\), got 1.5"):
        Augmentation(crop=(4, 4), cat_max_ratio=1.5)

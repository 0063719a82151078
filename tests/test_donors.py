"""CIM's long-tail donors (`udaseg.data.ClassDonors`): prepared in background threads, the same
crops as prepared on demand, never read in the training thread once ready, and resumable."""

from __future__ import annotations

import threading

import numpy as np
import torch

from tests.helpers import tiny_data
from udaseg.data import Augmentation, ClassDonors, TransformedDataset

CROP = Augmentation(crop=(16, 16))


class RecordingDataset(torch.utils.data.Dataset):
    """Wraps a dataset and records the thread of every read."""

    def __init__(self, dataset) -> None:
        self.dataset, self.threads = dataset, []

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        self.threads.append(threading.current_thread().name)
        return self.dataset[index]


def donors(workers: int, source=None, seed: int = 3) -> ClassDonors:
    module = tiny_data(source_augmentation=CROP)
    source = source or module.source
    return ClassDonors(lambda: TransformedDataset(source, CROP, "imagenet"),
                       module.class_holders, seed=seed, workers=workers)


def test_donors_hold_their_class_and_do_not_depend_on_threads():
    module = tiny_data(source_augmentation=CROP)
    classes = [c for c in range(module.num_classes) if module.class_holders(c).size]
    on_demand, threaded = donors(workers=0), donors(workers=2)
    threaded.prefetch(classes)
    for class_id in classes * 3:                      # three donors of each class
        expected, actual = on_demand.next(class_id), threaded.next(class_id)
        assert (expected is None) == (actual is None)
        if expected is not None:
            assert (expected["label"] == class_id).any()
            assert torch.equal(expected["image"], actual["image"])
            assert torch.equal(expected["label"], actual["label"])
    threaded.close()
    # Successive donors of a class differ (new images and crops), other seeds too.
    first, second = (donors(0).donor(classes[0], position) for position in (0, 1))
    assert not torch.equal(first["image"], second["image"])
    assert not torch.equal(first["image"], donors(0, seed=4).donor(classes[0], 0)["image"])


def test_ready_donors_are_not_read_in_the_training_thread():
    module = tiny_data(source_augmentation=CROP)
    source = RecordingDataset(module.source)
    stream = donors(workers=1, source=source)
    class_id = next(c for c in range(module.num_classes) if module.class_holders(c).size)
    stream.prefetch([class_id])
    stream._ready[class_id].result()                   # prepared while "the network trains"
    source.threads.clear()
    assert stream.next(class_id) is not None
    stream._ready[class_id].result()                   # the next one is on its way
    assert source.threads and threading.main_thread().name not in source.threads
    stream.close()


def test_a_class_without_images_has_no_donor():
    stream = ClassDonors(lambda: None, lambda class_id: np.array([], dtype=int), seed=0,
                         workers=1)
    assert stream.next(5) is None and stream.positions == {5: 1}
    stream.close()


def test_the_data_module_checkpoints_the_donor_positions_and_resumes_them():
    module = tiny_data(source_augmentation=CROP, donor_workers=1)
    class_id = next(c for c in range(module.num_classes) if module.class_holders(c).size)
    module.donors.prefetch([class_id])
    for _ in range(2):
        module.paste_donor(class_id)
    state = module.state_dict()
    assert state["donor_positions"] == [{class_id: 2}]
    expected = module.paste_donor(class_id)
    module.teardown("fit")
    resumed = tiny_data(source_augmentation=CROP, donor_workers=0)
    resumed.load_state_dict(state)
    assert torch.equal(resumed.paste_donor(class_id)["image"], expected["image"])

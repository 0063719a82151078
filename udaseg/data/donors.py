"""Source crops that contain a given class, prepared off the training loop: the donors of CIM's
long-tail pasting (`udaseg.adaptation.LongTailPasting`, in `udaseg.methods.CIM`).

Which classes an iteration pastes depends on the model (CIM draws them by its current class
thresholds), so the donors cannot be a batch a DataLoader prepares ahead. Instead each class
has its own endless stream of donors, and the next donor of every class is decoded and cropped
in background threads while the network trains; a paste takes the ready crop and queues the
class's next one. Nothing on the training loop's path reads a file.

Class c's k-th donor is a pure function of (seed, c, k): the image is drawn from the source
images that contain c, cropped by the source augmentation, and re-drawn (another image, another
crop) until the crop holds c, at most `max_tries` times. So the donors a run pastes do not
depend on the threads, their timing or the number of workers (0 = prepared when asked, in the
training process), and the positions (k per class) are the streams' whole state: checkpointed
by `UDADataModule`, they make a resumed run paste the same crops.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Optional

import numpy as np

from udaseg.data.transforms import TransformedDataset


class ClassDonors:
    """Per-class donor streams with one donor per class prepared ahead.

    Args:
        make_dataset: builds a `TransformedDataset` of the source set with the source
            augmentation (one per thread: its random state is per call, not shareable).
        holders: class id -> indices of the source images with at least one pixel of it.
        seed: the streams' seed (from the data seed and the rank).
        max_tries: crops drawn per donor before giving up (the official code tries up to 1000
            times; DAFormer's rare-class crops 10).
        workers: background threads; 0 prepares each donor when it is asked for.
    """

    def __init__(self, make_dataset: Callable[[], TransformedDataset],
                 holders: Callable[[int], np.ndarray], seed: int, max_tries: int = 10,
                 workers: int = 1) -> None:
        if max_tries < 1:
            raise ValueError(f"max_tries must be >= 1, got {max_tries}")
        self.make_dataset = make_dataset
        self.holders = holders
        self.seed = seed
        self.max_tries = max_tries
        self.workers = workers
        self.positions: dict[int, int] = {}
        self._ready: dict[int, Future] = {}
        self._executor: Optional[ThreadPoolExecutor] = None
        self._local = threading.local()

    def _dataset(self) -> TransformedDataset:
        dataset = getattr(self._local, "dataset", None)
        if dataset is None:
            dataset = self._local.dataset = self.make_dataset()
        return dataset

    def donor(self, class_id: int, position: int) -> Optional[dict]:
        """Class `class_id`'s donor number `position` ("image", "label", ...), or None when no
        source image has the class or no crop caught it."""
        holders = self.holders(class_id)
        if holders.size == 0:
            return None
        rng = np.random.default_rng([self.seed, class_id, position])
        dataset = self._dataset()
        for _ in range(self.max_tries):
            index = int(holders[rng.integers(holders.size)])
            dataset.reseed(int(rng.integers(2**31 - 1)))
            item = dataset[index]
            if bool((item["label"] == class_id).any()):
                return item
        return None

    def _submit(self, class_id: int) -> None:
        if self.workers == 0:
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="udaseg-donor")
        self._ready[class_id] = self._executor.submit(self.donor, class_id,
                                                      self.positions.get(class_id, 0))

    def prefetch(self, class_ids: Iterable[int]) -> None:
        """Start preparing the next donor of each class (e.g. every class a run may paste)."""
        for class_id in class_ids:
            self.holders(class_id)  # the class index is built here, not in several threads
            if class_id not in self._ready:
                self._submit(class_id)

    def next(self, class_id: int) -> Optional[dict]:
        """Class `class_id`'s next donor; the one after it starts in the background."""
        position = self.positions.get(class_id, 0)
        future = self._ready.pop(class_id, None)
        if future is not None and not future.cancel():
            item = future.result()
        else:  # not started yet (or no workers): prepared here, the same crop
            item = self.donor(class_id, position)
        self.positions[class_id] = position + 1
        self._submit(class_id)
        return item

    def state_dict(self) -> dict[int, int]:
        return dict(self.positions)

    def load_state_dict(self, positions: dict) -> None:
        """Go on from saved positions; donors prepared for the old ones are dropped."""
        self.close()
        self.positions = {int(class_id): int(position)
                          for class_id, position in positions.items()}

    def close(self) -> None:
        """Stop the threads and drop what they prepared (the positions stay)."""
        for future in self._ready.values():
            future.cancel()
        self._ready.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

"""CIM's long-tail pasting (Yan et al., IEEE T-ITS 2023): rare classes, cut from other source
crops that contain them, pasted onto a source crop before ClassMix mixes it into a target image."""

from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn.functional as F

from udaseg.adaptation.batch_augment import paste
from udaseg.adaptation.thresholds import ThresholdSelection

#: Fewer ClassMix classes when rare classes are pasted too (official: ceil(n/2) - 2, >= 1).
LONG_TAIL_CLASSMIX_DROP = 2

LongTailSampling = Literal["threshold", "uniform"]


class LongTailPasting:
    """Draws rare classes and pastes donor crops of them.

    The donors come ready from the data module's per-class streams (`udaseg.data.ClassDonors`,
    prepared off the training loop); the data module is handed over with `attach` when training
    starts.

    Args:
        probability: chance, per source/target pair, that rare classes are pasted (CIM 0.3).
        num_classes: C.
        classes: the classes that may be pasted; None = every class (the official adaptive run).
        count: (min, max) classes pasted when pasting happens (official 2-4).
        sampling: "threshold": with replacement, probabilities softmax(1 / theta_c) of
            `selection`'s thresholds (classes the model is unsure of come first; official), or
            "uniform": without replacement.
        selection: TUFL's thresholds, read by "threshold" sampling.
    """

    def __init__(self, probability: float, num_classes: int,
                 classes: Optional[list[int]] = None, count: tuple[int, int] = (2, 4),
                 sampling: LongTailSampling = "threshold",
                 selection: Optional[ThresholdSelection] = None) -> None:
        low, high = count
        if not 1 <= low <= high:
            raise ValueError(f"model.init_args.long_tail_count must be (min, max) with 1 <= min "
                             f"<= max, got {tuple(count)}")
        if sampling == "threshold" and selection is None:
            raise ValueError("long_tail_sampling: threshold reads TUFL's class thresholds")
        self.probability = probability
        self.candidates = torch.as_tensor(classes if classes is not None else range(num_classes))
        self.count = (low, high)
        self.sampling = sampling
        self.selection = selection
        self.donors: Optional[object] = None

    def attach(self, datamodule: object) -> None:
        """Take the donor crops from `datamodule` (a `udaseg.data.UDADataModule`) and start
        preparing one of every class that may be pasted."""
        if not hasattr(datamodule, "paste_donor"):
            raise ValueError("long-tail pasting reads other source crops through "
                             "udaseg.data.UDADataModule; set model.init_args.long_tail_p: 0 "
                             f"with {type(datamodule).__name__}")
        self.donors = datamodule
        if hasattr(datamodule, "donors"):
            datamodule.donors.prefetch(self.candidates.tolist())

    def draw(self, generator: torch.Generator) -> list[int]:
        """The rare classes to paste onto one source crop."""
        low, high = self.count
        count = int(torch.randint(low, high + 1, (), generator=generator))
        if self.sampling == "threshold":
            thresholds = self.selection.thresholds.cpu()[self.candidates]
            picks = torch.multinomial(F.softmax(1.0 / thresholds, dim=0), count,
                                      replacement=True, generator=generator)
        else:
            picks = torch.randperm(self.candidates.numel(), generator=generator)[:count]
        return self.candidates[picks].tolist()

    def paste(self, image: torch.Tensor, label: torch.Tensor, mask: torch.Tensor,
              generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """Paste each drawn rare class, cut from a donor crop that contains it, onto this source
        crop: its (3, H, W) image, (H, W) label and (H, W) ClassMix mask."""
        if self.donors is None:
            raise RuntimeError("LongTailPasting.attach(datamodule) must run before pasting")
        for class_id in self.draw(generator):
            donor = self.donors.paste_donor(class_id)
            if donor is None:
                continue
            if donor["label"].shape != label.shape:
                raise ValueError(f"long-tail pasting needs source crops of one size: a donor "
                                 f"crop is {tuple(donor['label'].shape)}, the batch's "
                                 f"{tuple(label.shape)}; set data.source_augmentation.crop")
            region = donor["label"].to(label.device) == class_id
            image = paste(region, donor["image"].to(image), image)
            label = torch.where(region, torch.full_like(label, class_id), label)
            mask = mask | region
        return image, label, mask

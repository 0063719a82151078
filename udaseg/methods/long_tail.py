"""CIM's long-tail pasting (Yan et al., IEEE T-ITS 2023): rare classes, cut from other source
crops that contain them, pasted onto a source crop before it is mixed into a target image (a
mixin of `udaseg.methods.CrossDomainMixing`).

Needs the method's `hparams.long_tail_classes / long_tail_count / long_tail_sampling`,
`thresholds` (TUFL's per-class confidence thresholds) and a `udaseg.data.UDADataModule`, whose
per-class donor streams (`udaseg.data.ClassDonors`) prepare the crops off the training loop.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from udaseg.batch_augment import paste

#: Fewer ClassMix classes when rare classes are pasted too (official: ceil(n/2) - 2, >= 1).
LONG_TAIL_CLASSMIX_DROP = 2


class LongTailPasting:
    def _donor_source(self):
        datamodule = self.trainer.datamodule
        if not hasattr(datamodule, "paste_donor"):
            raise ValueError("long-tail pasting reads other source crops through "
                             "udaseg.data.UDADataModule; set model.init_args.long_tail_p: 0 "
                             f"with {type(datamodule).__name__}")
        return datamodule

    def prefetch_donors(self) -> None:
        """Start preparing a donor of every class that may be pasted (at the start of fit)."""
        datamodule = self._donor_source()
        if hasattr(datamodule, "donors"):
            datamodule.donors.prefetch(self.long_tail_candidates().tolist())

    def long_tail_candidates(self) -> torch.Tensor:
        """The classes long-tail pasting may paste."""
        return torch.as_tensor(self.hparams.long_tail_classes
                               if self.hparams.long_tail_classes is not None
                               else range(self.num_classes))

    def long_tail_draw(self, generator: torch.Generator) -> list[int]:
        """The rare classes to paste onto one source crop."""
        candidates = self.long_tail_candidates()
        low, high = self.hparams.long_tail_count
        count = int(torch.randint(low, high + 1, (), generator=generator))
        if self.hparams.long_tail_sampling == "threshold":
            probabilities = F.softmax(1.0 / self.thresholds.cpu()[candidates], dim=0)
            picks = torch.multinomial(probabilities, count, replacement=True,
                                      generator=generator)
        else:
            picks = torch.randperm(candidates.numel(), generator=generator)[:count]
        return candidates[picks].tolist()

    def paste_long_tail(self, image: torch.Tensor, label: torch.Tensor, mask: torch.Tensor,
                        generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """Paste each drawn rare class, cut from a source crop that contains it, onto this
        source crop (image, label and mix mask). The donors come ready from the data module's
        per-class streams (`udaseg.data.ClassDonors`), so `generator` only draws the classes."""
        datamodule = self._donor_source()
        for class_id in self.long_tail_draw(generator):
            donor = datamodule.paste_donor(class_id)
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

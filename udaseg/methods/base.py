"""The shared base of every method: one training loop, optimisers, poly LR, evaluation.

A method subclasses `UDAMethod` and implements `adaptation_step(source, target)`, which computes
its losses and calls `self.manual_backward` on each; everything else lives here.

What "iteration" means: one source batch + one target batch, as in the papers. Lightning counts
every optimizer `.step()` as a global step; only the segmenter's step goes through Lightning's
counting wrapper, discriminators are stepped through the strategy directly, so
`trainer.global_step` == iterations and `trainer.max_steps` is the paper's iteration count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from udaseg.losses import segmentation_cross_entropy, upsample_logits
from udaseg.metrics import ConfusionMatrix, summarize
from udaseg.models import (DeepLabV2, DualClassifierDeepLab, SegOutput, load_imagenet_init,
                           load_segmenter_checkpoint)


@dataclass(frozen=True)
class SegmenterConfig:
    """The segmentation network.

    Args:
        depth: ResNet depth (101 = the papers' DeepLabV2; 18 with a small width for CPU runs).
        width: stem channels (64 in the papers).
        multi_level: add the auxiliary classifier on layer3 (ADVENT/AdaptSegNet multi-level).
            Only read by the "deeplabv2" architecture.
        architecture: "deeplabv2" (one classifier on layer4, plus the layer3 one if
            `multi_level`) or "dual_classifier" (CLAN: two classifiers `layer5`/`layer6` on
            layer4, prediction = the sum of their logits; `multi_level` is ignored).
        aspp_summed_branches: "deeplabv2" only: sum only the first N of the four ASPP branches;
            2 reproduces the AdaptSegNet/MaxSquare code (and their released checkpoints'
            predictions); None sums all four (ADVENT, CLAN, the paper).
        pretrained: local path of ImageNet initialisation weights (torchvision or the official
            DeepLab `Scale.`-prefixed format); nothing is ever downloaded.
        pretrained_sha256: expected SHA-256 of that file (optional check).
        init_checkpoint: local path of a full segmenter state dict (a released checkpoint or
            another run's Lightning checkpoint) to start from: weights only, fresh optimisers.
    """

    depth: Literal[18, 34, 50, 101] = 101
    width: int = 64
    multi_level: bool = True
    architecture: Literal["deeplabv2", "dual_classifier"] = "deeplabv2"
    aspp_summed_branches: Optional[int] = None
    pretrained: Optional[str] = None
    pretrained_sha256: Optional[str] = None
    init_checkpoint: Optional[str] = None


@dataclass(frozen=True)
class OptimConfig:
    """Optimisers and the poly schedule (defaults: the DeepLabV2 UDA papers).

    Args:
        lr: SGD learning rate of the backbone; classifiers get `classifier_lr_mult` times it.
        max_iters: horizon of the poly schedule; defaults to `trainer.max_steps`. ADVENT decays
            over 250k iterations but stops at 120k: set 250000 here and max_steps 120000.
        warmup_iters: linear warm-up `lr * iteration / warmup_iters` before the poly schedule
            takes over (CLAN warms up over its pre-heat); 0 = poly from the first iteration.
        discriminator_lr, discriminator_betas: Adam for each discriminator, same schedule.
    """

    lr: float = 2.5e-4
    momentum: float = 0.9
    weight_decay: float = 5e-4
    classifier_lr_mult: float = 10.0
    poly_power: float = 0.9
    max_iters: Optional[int] = None
    warmup_iters: int = 0
    discriminator_lr: float = 1e-4
    discriminator_betas: tuple[float, float] = (0.9, 0.99)


# Lightning checkpoints pickle these configs in `hyper_parameters`; allowing them lets
# `segmenter.init_checkpoint` read another run's checkpoint with `torch.load(weights_only=True)`.
torch.serialization.add_safe_globals([SegmenterConfig, OptimConfig])


def segmenter_network(config: SegmenterConfig, num_classes: int) -> nn.Module:
    """The (randomly initialised) network `config.architecture` describes."""
    if config.architecture == "dual_classifier":
        return DualClassifierDeepLab(num_classes, depth=config.depth, width=config.width)
    return DeepLabV2(num_classes, multi_level=config.multi_level, depth=config.depth,
                     width=config.width, aspp_summed_branches=config.aspp_summed_branches)


def level_probabilities(outputs: SegOutput, size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Softmax of each level's ("main", "aux") logits, upsampled to `size` first (official)."""
    levels = {"main": outputs.main, "aux": outputs.aux}
    return {level: F.softmax(upsample_logits(logits, size), dim=1)
            for level, logits in levels.items() if logits is not None}


def poly_lr(base_lr: float, iteration: int, max_iters: int, power: float = 0.9,
            warmup_iters: int = 0) -> float:
    """`base_lr * (1 - iteration / max_iters) ** power`, clamped at 0 past the horizon.

    With `warmup_iters > 0`, iterations before it use `base_lr * iteration / warmup_iters`
    instead (CLAN's official `lr_warmup`), and poly takes over from there.
    """
    if iteration < warmup_iters:
        return base_lr * max(iteration, 0) / warmup_iters
    progress = min(max(iteration, 0) / max_iters, 1.0)
    return base_lr * (1.0 - progress) ** power


class UDAMethod(pl.LightningModule):
    """Base LightningModule of all methods (manual optimisation).

    Args:
        num_classes, ignore_index, class_names, eval_subsets: the label space; the CLI links
            them from the data module, so configs never write them.
        segmenter: network configuration.
        optim: optimiser configuration.
        aux_weight: weight of the auxiliary (layer3) source loss, 0.1 in ADVENT.
        bn_stats: "batch" normalises with batch statistics during training and updates the
            running stats (what the official code does, since it calls `model.train()`);
            "frozen" keeps BN layers in eval mode (statistics of the initialisation).
        adaptation_warmup: iterations over which the weight of every target (adaptation) loss
            ramps linearly from 0 to 1. The papers start from ImageNet (or source-trained)
            weights, so 0 reproduces them; a network trained from scratch needs a warm-up,
            or the target losses reinforce its first, arbitrary predictions.
    """

    def __init__(
        self,
        num_classes: int = 19,
        ignore_index: int = 255,
        class_names: Optional[list[str]] = None,
        eval_subsets: Optional[dict[str, list[int]]] = None,
        segmenter: SegmenterConfig = SegmenterConfig(),
        optim: OptimConfig = OptimConfig(),
        aux_weight: float = 0.1,
        bn_stats: Literal["batch", "frozen"] = "batch",
        adaptation_warmup: int = 0,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.save_hyperparameters()
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = list(class_names or [f"class_{i}" for i in range(num_classes)])
        if len(self.class_names) != num_classes:
            raise ValueError(f"class_names has {len(self.class_names)} entries, "
                             f"num_classes is {num_classes}")
        self.eval_subsets = dict(eval_subsets or {"mIoU": list(range(num_classes))})
        self.segmenter_config = segmenter
        self.optim_config = optim
        self.aux_weight = aux_weight
        self.bn_stats = bn_stats
        self.adaptation_warmup = adaptation_warmup
        self.segmenter = self.build_segmenter()
        self.discriminators = self.build_discriminators()
        self.val_confusion = ConfusionMatrix(num_classes, ignore_index)
        self.test_confusion = ConfusionMatrix(num_classes, ignore_index)
        # Latest evaluation results, read by callbacks (IoU table, result files).
        self.eval_results: dict[str, dict[str, float]] = {}
        # Iterations the loaded checkpoint was trained for (validate/test report it).
        self.trained_iterations = 0

    # ----------------------------------------------------------------- construction
    def build_segmenter(self) -> nn.Module:
        config = self.segmenter_config
        model = segmenter_network(config, self.num_classes)
        if config.pretrained:
            load_imagenet_init(model, config.pretrained, sha256=config.pretrained_sha256)
        if config.init_checkpoint:
            load_segmenter_checkpoint(model, config.init_checkpoint)
        return model

    def build_discriminators(self) -> nn.ModuleDict:
        """Discriminators by name; each gets its own Adam optimiser. None by default."""
        return nn.ModuleDict()

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        config = self.optim_config
        segmenter_optimizer = torch.optim.SGD(
            [{"params": list(self.segmenter.backbone_parameters()), "base_lr": config.lr},
             {"params": list(self.segmenter.classifier_parameters()),
              "base_lr": config.lr * config.classifier_lr_mult}],
            lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
        optimizers = [segmenter_optimizer]
        for discriminator in self.discriminators.values():
            optimizers.append(torch.optim.Adam(
                [{"params": discriminator.parameters(), "base_lr": config.discriminator_lr}],
                lr=config.discriminator_lr, betas=config.discriminator_betas))
        return optimizers

    def train(self, mode: bool = True) -> UDAMethod:
        super().train(mode)
        if mode and self.bn_stats == "frozen":
            for module in self.segmenter.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def on_train_start(self) -> None:
        # Lightning never calls train() when fit starts (modules are built in train mode), so
        # apply `bn_stats` here; evaluation loops restore each module's mode afterwards.
        self.train()

    # ----------------------------------------------------------------- training loop
    @property
    def max_iters(self) -> int:
        horizon = self.optim_config.max_iters or (self.trainer.max_steps if self._trainer else -1)
        if horizon is None or horizon <= 0:
            raise ValueError("set trainer.max_steps (iterations) or model.init_args.optim.max_iters:"
                             " the poly schedule needs a horizon")
        return horizon

    @property
    def adaptation_weight(self) -> float:
        """Multiplier of the target losses at this iteration (see `adaptation_warmup`)."""
        if self.adaptation_warmup <= 0:
            return 1.0
        return min(1.0, self.global_step / self.adaptation_warmup)

    def set_learning_rates(self, optimizers: list) -> None:
        config = self.optim_config
        for optimizer in optimizers:
            for group in optimizer.param_groups:
                group["lr"] = poly_lr(group["base_lr"], self.global_step, self.max_iters,
                                      config.poly_power, config.warmup_iters)

    def step_optimizers(self, optimizers: list) -> None:
        """Step the segmenter (counted as one iteration) and then every discriminator."""
        segmenter_optimizer, *discriminator_optimizers = optimizers
        segmenter_optimizer.step()
        for optimizer in discriminator_optimizers:
            # Through the strategy, so AMP gradient scaling applies, but not counted as a step.
            self.trainer.strategy.optimizer_step(optimizer.optimizer, closure=lambda: None,
                                                 model=self)

    def training_step(self, batch: dict, batch_idx: int) -> None:
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        self.set_learning_rates(optimizers)
        losses = self.adaptation_step(batch["source"], batch.get("target"))
        self.step_optimizers(optimizers)
        source_images = batch["source"]["image"]
        self.log_dict({f"train/{name}": value.detach() for name, value in losses.items()},
                      on_step=True, on_epoch=False, batch_size=source_images.shape[0],
                      prog_bar=False)
        self.log("train/lr", optimizers[0].param_groups[0]["lr"], on_step=True, on_epoch=False,
                 batch_size=source_images.shape[0])

    def on_train_batch_end(self, outputs: object, batch: dict, batch_idx: int) -> None:
        # Asking to stop at the last iteration makes Lightning validate once more, so every run
        # ends with a target evaluation, whatever max_steps and val_check_interval are.
        if 0 < self.trainer.max_steps <= self.global_step:
            self.trainer.should_stop = True

    def adaptation_step(self, source: dict, target: Optional[dict]) -> dict[str, torch.Tensor]:
        """One iteration's losses; call `self.manual_backward` on each, return them for logging.

        `source` has "image" (N, 3, H, W) and "label" (N, H, W); `target` has "image" only, or
        is None when the run has no target stream.
        """
        raise NotImplementedError

    def source_pixel_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Loss of one level's (N, C, h, w) logits against (N, H, W) labels: cross-entropy.

        Methods that replace the source loss (Conservative Loss, CLAN's focal quirk) override
        this; `supervised_loss` applies it to every level.
        """
        return segmentation_cross_entropy(logits, labels, self.ignore_index)

    def supervised_loss(self, outputs: SegOutput, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """`L(main) + aux_weight * L(aux)` on labelled source pixels (L = `source_pixel_loss`)."""
        losses = {"seg_main": self.source_pixel_loss(outputs.main, labels)}
        total = losses["seg_main"]
        if outputs.aux is not None and self.aux_weight > 0:
            losses["seg_aux"] = self.source_pixel_loss(outputs.aux, labels)
            total = total + self.aux_weight * losses["seg_aux"]
        losses["seg"] = total
        return losses

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.trained_iterations = int(checkpoint.get("global_step", 0))

    @property
    def iteration(self) -> int:
        """Training iterations behind the current weights (also outside `fit`)."""
        return max(self.global_step, self.trained_iterations) if self._trainer else \
            self.trained_iterations

    # ----------------------------------------------------------------- evaluation
    def predict_logits(self, images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Main-classifier logits upsampled to `size` (the label resolution in evaluation)."""
        return upsample_logits(self.segmenter(images).main, size)

    def _evaluate_batch(self, batch: dict, confusion: ConfusionMatrix) -> None:
        labels = batch["label"]
        logits = self.predict_logits(batch["image"], tuple(labels.shape[-2:]))
        confusion.update(logits.argmax(dim=1), labels)

    def _finish_evaluation(self, stage: str, confusion: ConfusionMatrix) -> None:
        matrix = confusion.compute()
        metrics = summarize(matrix, self.class_names, self.eval_subsets)
        confusion.reset()
        self.eval_results[stage] = metrics
        # Values are already reduced over ranks (torchmetrics); sync_dist only averages copies.
        self.log_dict({f"{stage}/{name}": value for name, value in metrics.items()},
                      on_step=False, on_epoch=True, sync_dist=True)

    @torch.no_grad()
    def average_bn_statistics(self) -> None:
        """Make BN running statistics identical on every rank (their mean).

        Under DDP each rank's forward passes update its own running stats, and DDP broadcasts
        buffers only once per iteration, so the ranks drift apart; without this each rank would
        evaluate its shard with a slightly different model.
        """
        if self._trainer is None or self.trainer.world_size <= 1:
            return
        for buffer in self.segmenter.buffers():
            if buffer.is_floating_point():
                buffer.copy_(self.trainer.strategy.reduce(buffer.clone(), reduce_op="mean"))

    def on_validation_epoch_start(self) -> None:
        self.average_bn_statistics()

    def on_test_epoch_start(self) -> None:
        self.average_bn_statistics()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate_batch(batch, self.val_confusion)

    def on_validation_epoch_end(self) -> None:
        self._finish_evaluation("val", self.val_confusion)

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """Train-id maps at each image's original size (one size per batch)."""
        height, width = (int(value) for value in batch["original_size"][0])
        logits = self.predict_logits(batch["image"], (height, width))
        return {"prediction": logits.argmax(dim=1).to(torch.uint8), "name": batch["name"]}

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate_batch(batch, self.test_confusion)

    def on_test_epoch_end(self) -> None:
        self._finish_evaluation("test", self.test_confusion)

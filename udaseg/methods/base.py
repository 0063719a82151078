"""The shared base of every method: one training loop, optimisers, poly LR, checkpoints.

Building the segmenter and evaluating it (validation, test, predict) is the layer below,
`udaseg.methods.segmentation_module.SegmentationModule`.

A method subclasses `UDAMethod` and implements `adaptation_step(source, target)`, which computes
its losses and calls `self.manual_backward` on each; everything else lives here. It usually
starts with `supervised_step(source, target["image"])` (source forward, supervised loss,
backward, then the target forward; or all images in one forward on the fused fast path).

Construction rule: the base saves every constructor argument of the whole class chain as
hyperparameters first and builds the segmenter (with its initial weights) and the evaluator; a
method then builds its components (`udaseg.adaptation`: discriminators, a teacher, ClassMix...)
right after `super().__init__()`, in a fixed order (random initialisations depend on it), and
never sets attributes before it. The base finds the networks among them (`networks`) for the
fast path and the BN statistics of DDP ranks.

What "iteration" means: one source batch + one target batch, as in the papers. Lightning counts
every optimizer `.step()` as a global step; only the segmenter's step goes through Lightning's
counting wrapper, discriminators are stepped through the strategy directly, so
`trainer.global_step` == iterations and `trainer.max_steps` is the paper's iteration count.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar, Literal, Optional

import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import nn

from udaseg.adaptation.batch_augment import iteration_generator
from udaseg.adaptation.class_mix import teacher_pseudo_labels
from udaseg.adaptation.discriminators import DomainDiscriminators
from udaseg.adaptation.masked_consistency import (
    MIC_STREAM,
    MaskedImageConsistency,
    kept_bn_statistics,
    pseudo_weight_map,
)
from udaseg.adaptation.photometric import require_input_normalization
from udaseg.evaluation.evaluator import SegmentationEvaluator
from udaseg.evaluation.inference import Inference
from udaseg.losses import (
    pixel_weighted_cross_entropy,
    segmentation_cross_entropy,
    upsample_logits,
)
from udaseg.methods.checkpointing import (
    CONSECUTIVE_SKIPS_KEY,
    RNG_STATES_KEY,
    CheckpointError,
    checkpoint_mismatch,
    horizon_change_warning,
    rank_rng_states,
    rename_legacy_keys,
)
from udaseg.methods.fast_path import DeferredBackward, FastPath
from udaseg.methods.nonfinite import nonfinite_terms, stop_message
from udaseg.methods.optim import POLY_HORIZON_KEY, OptimConfig, one_scaler_update
from udaseg.methods.optim import poly_lr as poly_lr  # re-exported: udaseg.methods.poly_lr
from udaseg.methods.segmentation_module import SegmentationModule
from udaseg.models import (
    AUX,
    MAIN,
    DeepLabV2,
    SegmenterFactory,
    SegmenterOutput,
    SegmenterWeights,
    segmenter_spec,
)
from udaseg.models.fused_forward import batched_forward
from udaseg.models.weights import check_input_normalization
from udaseg.runtime.rng_state import restore_rng_states

#: `nonfinite_loss: skip` gives up after this many skipped iterations in a row.
MAX_CONSECUTIVE_SKIPS = 20


class UDAMethod(SegmentationModule, abc.ABC):
    """Base LightningModule of all methods (manual optimisation).

    Args:
        num_classes, ignore_index, class_names, eval_subsets: the label space; the CLI links
            them from the data module, so configs never write them.
        segmenter: the network, any `udaseg.models.Segmenter`: in a config `class_path` +
            `init_args` without `num_classes` (the method passes it); in Python the class or a
            `functools.partial` of it. DeepLabV2 (ResNet-101, multi-level) by default.
        weights: where the segmenter's initial weights come from (ImageNet file, another run's
            checkpoint, SHA-256 pins); random initialisation by default.
        optim: optimiser configuration.
        aux_weight: weight of the auxiliary (layer3) source loss, 0.1 in ADVENT.
        head_weights: weight of each segmenter head in the source loss (and in methods that
            weight heads the same way, e.g. TUFL's target loss), replacing `{main: 1, aux:
            aux_weight}`; e.g. BiSeNet as in TUFL: 1/3 for each of its three heads.
        loss_reduction: how the source cross-entropy averages over pixels: "labelled"
            divides the summed loss by the labelled pixels (PyTorch's `ignore_index` mean, the
            DeepLabV2 papers); "all_pixels" by all N*H*W pixels, ignored ones contributing 0
            (mmseg's `CrossEntropyLoss`, DAFormer). Methods with their own source loss
            (Conservative Loss, CLAN's focal loss, TUFL's weighted loss) keep their reduction.
        bn_stats: "batch" normalises with batch statistics during training and updates the
            running stats (what the official code does, since it calls `model.train()`);
            "frozen" keeps BN layers in eval mode (statistics of the initialisation).
        adaptation_warmup: iterations over which the weight of every target (adaptation) loss
            ramps linearly from 0 to 1. The papers start from ImageNet (or source-trained)
            weights, so 0 reproduces them; a network trained from scratch needs a warm-up,
            or the target losses reinforce its first, arbitrary predictions.
        nonfinite_loss: what a NaN/inf loss term does: "stop" raises at once, naming the
            iteration and the term(s), before any optimiser step (nothing is saved from it);
            "skip" drops the iteration's update instead (no optimiser step, no EMA update;
            the forward's BN running statistics are kept), counted in `skipped_iterations`
            and logged as `train/skipped_iterations`. Ranks decide together under DDP.
        inference: test-time options of validation, test and predict (flip, scales, sliding
            windows; `udaseg.evaluation.Inference`); the whole image once by default.
        fast_path: speed switches (channels_last, fused forwards, torch.compile;
            `udaseg.methods.fast_path.FastPath`), all off by default.
    """

    #: Whether every training batch must carry a target batch; checked once, in the loop.
    needs_target: ClassVar[bool] = True
    #: Whether `adaptation_step` reads target batches at all; when not, the data module draws
    #: none (source-only: a target set in the config costs no time).
    reads_target: ClassVar[bool] = True
    #: Loss terms (keys of `adaptation_step`'s dict) shown on the progress bar; all are logged.
    progress_losses: ClassVar[tuple[str, ...]] = ("seg",)
    #: After the segmenter's step at iteration t an EMA teacher takes alpha(t + offset): 1 as
    #: in mmseg-based code (DAFormer, MIC), where the teacher follows at the start of the next
    #: iteration with that iteration's alpha; DACS's own code uses 0.
    teacher_alpha_offset: ClassVar[int] = 1
    #: MIC's masked image consistency, for the methods that take a `mic` argument.
    mic: Optional[MaskedImageConsistency] = None

    def __init__(
        self,
        num_classes: int = 19,
        ignore_index: int = 255,
        class_names: Optional[list[str]] = None,
        eval_subsets: Optional[dict[str, list[int]]] = None,
        segmenter: SegmenterFactory = DeepLabV2,
        weights: SegmenterWeights = SegmenterWeights(),
        optim: OptimConfig = OptimConfig(),
        aux_weight: float = 0.1,
        head_weights: Optional[dict[str, float]] = None,
        loss_reduction: Literal["labelled", "all_pixels"] = "labelled",
        bn_stats: Literal["batch", "frozen"] = "batch",
        adaptation_warmup: int = 0,
        nonfinite_loss: Literal["stop", "skip"] = "stop",
        inference: Inference = Inference(),
        fast_path: FastPath = FastPath(),
    ) -> None:
        super().__init__()
        if loss_reduction not in ("labelled", "all_pixels"):
            raise ValueError(f"model.init_args.loss_reduction must be 'labelled' or "
                             f"'all_pixels', got {loss_reduction!r}")
        self.automatic_optimization = False
        self.save_hyperparameters()
        # Plain data ({"class_path", "init_args"}), so checkpoints and hparams.yaml say which
        # network this is and `load_from_checkpoint` can rebuild it.
        self.save_hyperparameters({"segmenter": segmenter_spec(segmenter)})
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        # Typed copies: under the CLI `hparams` holds these as plain dicts.
        self.optim_config = optim
        self.weights_config = weights
        self.fast_path = fast_path if isinstance(fast_path, FastPath) else FastPath(**fast_path)
        self.segmenter = self.build_segmenter()
        unknown = sorted(set(head_weights) - set(self.segmenter.heads)) if head_weights else []
        if unknown:
            raise ValueError(f"model.init_args.head_weights names head(s) {unknown}, but "
                             f"{type(self.segmenter).__name__} has {list(self.segmenter.heads)}")
        # None here; adversarial methods replace it (one discriminator per level).
        self.discriminators = DomainDiscriminators()
        self.evaluator = SegmentationEvaluator(
            num_classes, ignore_index, class_names, eval_subsets,
            inference if isinstance(inference, Inference) else Inference(**inference))
        self.class_names = self.evaluator.class_names
        self.eval_subsets = self.evaluator.subsets
        # The data module's input normalisation (read when training starts): on-device
        # photometric steps work on RGB in [0, 1].
        self.input_normalization: Optional[str] = None
        # seed_everything's seed (set when training starts): the draws of iteration k on a
        # rank (`iteration_generator`) are the same in every run with that seed, resumed or not.
        self.augmentation_seed = 0
        self._deferred_backward: Optional[DeferredBackward] = None
        # Iterations the loaded checkpoint was trained for (validate/test report it).
        self.trained_iterations = 0
        # Checkpointed, so a resumed run keeps counting.
        self.register_buffer("skipped_iterations", torch.zeros((), dtype=torch.long))
        self.consecutive_skips = 0

    # ----------------------------------------------------------------- construction
    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        config = self.optim_config
        return [config.segmenter_optimizer(self.segmenter),
                *self.discriminators.optimizers(config.discriminator_lr,
                                                config.discriminator_betas)]

    def train(self, mode: bool = True) -> UDAMethod:
        super().train(mode)
        if mode and self.hparams.bn_stats == "frozen":
            for module in self.segmenter.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def on_train_start(self) -> None:
        # Lightning never calls train() when fit starts (modules are built in train mode), so
        # apply `bn_stats` here; evaluation loops restore each module's mode afterwards.
        self.train()
        self.augmentation_seed = torch.initial_seed()
        self.input_normalization = getattr(self.trainer.datamodule, "normalization", None)
        if self.mic is not None and self.mic.augments:
            require_input_normalization(self.input_normalization, ["mic"],
                                        self.trainer.datamodule)

    def networks(self) -> list[nn.Module]:
        """Every network of the method: the segmenter, the discriminators and a teacher's."""
        return [self.segmenter, *self.discriminators.values(), *self.teacher_networks()]

    def setup(self, stage: str) -> None:
        # Before any batch: weights that expect inputs normalised otherwise than the data
        # module's are refused (silent when either side does not say).
        datamodule = getattr(self._trainer, "datamodule", None)
        check_input_normalization(self.weights_config, getattr(datamodule, "normalization", None),
                                  getattr(self.segmenter, "pretrained_formats", ()))
        self.fast_path.prepare(self.networks())

    def iteration_generator(self, stream: int) -> torch.Generator:
        """A CPU generator of this iteration's draws on this rank, one per `stream`."""
        return iteration_generator(self.augmentation_seed, self.global_step, self.global_rank,
                                   stream=stream)

    # ----------------------------------------------------------------- training loop
    @property
    def poly_horizon(self) -> Optional[int]:
        """`optim.max_iters`, else `trainer.max_steps`; None when neither is set."""
        horizon = self.optim_config.max_iters or (self.trainer.max_steps if self._trainer else -1)
        return horizon if horizon is not None and horizon > 0 else None

    @property
    def max_iters(self) -> int:
        horizon = self.poly_horizon
        if horizon is None:
            raise ValueError("set trainer.max_steps (iterations) or "
                             "model.init_args.optim.max_iters: the poly schedule needs a horizon")
        return horizon

    @property
    def adaptation_weight(self) -> float:
        """Multiplier of the target losses at this iteration (see `adaptation_warmup`)."""
        warmup = self.hparams.adaptation_warmup
        if warmup <= 0:
            return 1.0
        return min(1.0, self.global_step / warmup)

    def set_learning_rates(self, optimizers: list) -> None:
        for optimizer in optimizers:
            for group in optimizer.param_groups:
                group["lr"] = self.optim_config.learning_rate(group["base_lr"], self.global_step,
                                                              self.max_iters)

    def step_optimizers(self, optimizers: list) -> None:
        """Step the segmenter (counted as one iteration) and then every discriminator; an fp16
        gradient scaler is updated once, after all of them (`one_scaler_update`). Then every
        teacher follows the new segmenter (`teacher_alpha_offset`; frozen ones stay)."""
        iteration = self.global_step
        segmenter_optimizer, *discriminator_optimizers = optimizers
        with one_scaler_update(self.trainer.precision_plugin):
            segmenter_optimizer.step()
            for optimizer in discriminator_optimizers:
                # Through the strategy, so AMP unscaling applies, but not counted as a step.
                self.trainer.strategy.optimizer_step(optimizer.optimizer, closure=lambda: None,
                                                     model=self)
        for teacher in self.teachers():
            teacher.update(self.segmenter, iteration + self.teacher_alpha_offset)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # The precision plugin calls this after AMP unscaling: a clip before `.step()` would
        # clip fp16-scaled gradients (Lightning issue #18089).
        max_norm = self.optim_config.max_grad_norm
        if max_norm is None or optimizer is not self.trainer.optimizers[0]:
            return
        # clip_grad_norm_ skips parameters without a gradient itself.
        norm = torch.nn.utils.clip_grad_norm_(
            [parameter for group in optimizer.param_groups for parameter in group["params"]],
            max_norm)
        self.log("train/grad_norm", norm, on_step=True, on_epoch=False, batch_size=1)

    def training_step(self, batch: dict, batch_idx: int) -> None:
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        self.set_learning_rates(optimizers)
        batch = self.fast_path.layout(batch)
        target = batch.get("target")
        if target is None and self.needs_target:
            raise ValueError(f"{type(self).__name__} adapts to a target stream, but the training "
                             "batches have none: set data.target")
        with self.iteration_backward():
            losses = self.adaptation_step(batch["source"], target)
        if self.nonfinite_terms(losses):
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
            self.skipped_iterations += 1
            self.consecutive_skips += 1
            if self.consecutive_skips >= MAX_CONSECUTIVE_SKIPS:
                raise FloatingPointError(
                    f"iteration {self.global_step}: {self.consecutive_skips} iterations in a row "
                    "had a non-finite loss and were skipped; the run is not recovering")
        else:
            self.consecutive_skips = 0
            self.step_optimizers(optimizers)
        # Logged for skipped iterations too (their non-finite terms), so every row of the
        # metrics holds the values of its own iteration, not those of the one before.
        batch_size = batch["source"]["image"].shape[0]
        for name, value in losses.items():
            self.log(f"train/{name}", value.detach(), on_step=True, on_epoch=False,
                     batch_size=batch_size, prog_bar=name in self.progress_losses)
        self.log("train/lr", optimizers[0].param_groups[0]["lr"], on_step=True, on_epoch=False,
                 batch_size=batch_size)
        if self.skipped_iterations > 0:
            self.log("train/skipped_iterations", self.skipped_iterations.float(), on_step=True,
                     on_epoch=False, batch_size=batch_size)

    def nonfinite_terms(self, losses: dict[str, torch.Tensor]) -> list[str]:
        """The loss terms that are NaN/inf on this rank, if any rank has one (else []);
        raises under `nonfinite_loss: stop`."""
        distributed = self._trainer is not None and self.trainer.world_size > 1
        bad = nonfinite_terms(losses, lambda flag: self.trainer.strategy.reduce(
            flag, reduce_op="sum") if distributed else flag)
        if bad and self.hparams.nonfinite_loss == "stop":
            raise FloatingPointError(stop_message(self.global_step, losses, bad))
        return bad

    def on_train_batch_end(self, outputs: object, batch: dict, batch_idx: int) -> None:
        # Asking to stop at the last iteration makes Lightning validate once more, so every run
        # ends with a target evaluation, whatever max_steps and val_check_interval are.
        if 0 < self.trainer.max_steps <= self.global_step:
            self.trainer.should_stop = True

    @abc.abstractmethod
    def adaptation_step(self, source: dict, target: Optional[dict]) -> dict[str, torch.Tensor]:
        """One iteration's losses; call `self.manual_backward` on each, return them for logging.

        `source` has "image" (N, 3, H, W) and "label" (N, H, W); `target` has "image" only. It
        is never None when the class sets `needs_target` (the default); otherwise it is None
        when the run has no target stream.
        """

    def supervised_step(self, source: dict, *images: torch.Tensor
                        ) -> tuple[SegmenterOutput, dict[str, torch.Tensor],
                                   list[SegmenterOutput]]:
        """Source forward, `supervised_loss`, backward, then the segmenter's outputs for each
        further image batch (target images, strong views, mixed images): how every iteration
        starts.

        Separately (the official order) the source graph is freed by its backward before the
        other batches go through the network, in the order given (which is the order BN
        running statistics see them). On the fused path (`fast_path.fused_forward`) all
        batches share one forward, in which BN layers with batch statistics still normalise
        each batch by its own statistics in this order, and the backward waits for the
        iteration's end.

        Returns the source outputs (methods reuse them, e.g. for discriminator maps), the loss
        terms for logging and the outputs of `images`, one per batch.
        """
        if self.fast_path.fused_forward:
            outputs, *others = batched_forward(self.segmenter, [source["image"], *images])
        else:
            outputs = self.segmenter(source["image"])
        losses = self.supervised_loss(outputs, source["label"])
        self.manual_backward(losses["seg"])
        if not self.fast_path.fused_forward:
            others = [self.segmenter(batch) for batch in images]
        return outputs, losses, others

    def masked_consistency_step(self, source: dict, target_images: torch.Tensor,
                                pseudo_labels: torch.Tensor,
                                pseudo_weights: torch.Tensor) -> dict[str, torch.Tensor]:
        """MIC (`self.mic`): the student's loss on the masked batch built from the teacher's
        (N, H, W) `pseudo_labels` and `pseudo_weights` of `target_images`, backward with
        weight `adaptation_weight * lambda_mic`; returns {"masked": L_mic} for logging."""
        masked = self.mic.masked_batch(source, target_images, pseudo_labels, pseudo_weights,
                                       self.iteration_generator(MIC_STREAM),
                                       self.input_normalization)
        with kept_bn_statistics(self.segmenter, self.mic.bn_statistics == "keep"):
            loss = self.weighted_loss(masked.images, masked.labels, masked.pixel_weights)
        self.manual_backward(self.adaptation_weight * self.mic.weight * loss)
        return {"masked": loss}

    def weighted_loss(self, images: torch.Tensor, labels: torch.Tensor,
                      pixel_weights: torch.Tensor) -> torch.Tensor:
        """The student's loss on images with (N, H, W) labels weighted per pixel (mixed and
        masked batches): the main head's logits, upsampled with the network's align_corners,
        `pixel_weighted_cross_entropy` (an average over all pixels)."""
        logits = upsample_logits(self.segmenter(images)[MAIN], tuple(labels.shape[-2:]),
                                 self.logits_align_corners)
        return pixel_weighted_cross_entropy(logits, labels, pixel_weights,
                                            ignore_index=self.ignore_index)

    def teacher_masked_consistency_step(self, source: dict,
                                        target: dict) -> dict[str, torch.Tensor]:
        """MIC in a method without self-training of its own (MinEnt, AdvEnt): the pseudo-labels
        come from MIC's EMA teacher (`self.teacher`), weighted by its confidence share (0 off
        the target stream's `pseudo_margins`)."""
        pseudo = teacher_pseudo_labels(self.teacher, target["image"], self.mic.pseudo_confidence)
        return self.masked_consistency_step(
            source, target["image"], pseudo.labels,
            pseudo_weight_map(pseudo.confidence_weight, tuple(pseudo.labels.shape),
                              valid=target.get("pseudo_valid")))

    def source_pixel_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Loss of one level's (N, C, h, w) logits against (N, H, W) labels: cross-entropy,
        reduced as `loss_reduction` says.

        Methods that replace the source loss (Conservative Loss, CLAN's focal quirk, TUFL's
        class weights) override this; `supervised_loss` applies it to every level.
        """
        return segmentation_cross_entropy(logits, labels, self.ignore_index,
                                          self.hparams.loss_reduction)

    @property
    def loss_head_weights(self) -> dict[str, float]:
        """Weight of each head's loss: `head_weights`, else main 1 and aux `aux_weight`."""
        if self.hparams.head_weights is not None:
            return dict(self.hparams.head_weights)
        weights = {MAIN: 1.0}
        if AUX in self.segmenter.heads and self.hparams.aux_weight > 0:
            weights[AUX] = self.hparams.aux_weight
        return weights

    def supervised_loss(self, outputs: SegmenterOutput,
                        labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """`sum_head weight * L(head)` on labelled source pixels (L = `source_pixel_loss`,
        weights `loss_head_weights`: by default `L(main) + aux_weight * L(aux)`)."""
        losses, total = {}, 0.0
        for head, weight in self.loss_head_weights.items():
            if weight > 0:
                losses[f"seg_{head}"] = self.source_pixel_loss(outputs[head], labels)
                total = total + weight * losses[f"seg_{head}"]
        losses["seg"] = total
        return losses

    @property
    def drawn_iterations(self) -> int:
        """Iterations that drew a batch of every training stream so far: the optimiser steps
        (`global_step`) plus the iterations skipped for a non-finite loss, which drew their
        batches but stepped nothing. The data module's streams continue from here on resume."""
        return self.global_step + int(self.skipped_iterations)

    @property
    def iteration(self) -> int:
        """Training iterations behind the current weights (also outside `fit`)."""
        return max(self.global_step, self.trained_iterations) if self._trainer else \
            self.trained_iterations

    # ----------------------------------------------------------------- fused backward
    @contextmanager
    def iteration_backward(self) -> Iterator[None]:
        """Around an iteration's `adaptation_step`: on the fused path (one forward for all
        batches, one graph) its backward calls are collected and run as one at the end."""
        if not self.fast_path.fused_forward:
            yield
            return
        self._deferred_backward = DeferredBackward()
        try:
            yield
            self._deferred_backward.run(super().manual_backward)
        finally:
            self._deferred_backward = None

    def manual_backward(self, loss: torch.Tensor, *args, **kwargs) -> None:
        """Lightning's backward (AMP scaling, DDP), or inside a fused iteration: kept for its
        one backward (the losses share one graph)."""
        if self._deferred_backward is None:
            super().manual_backward(loss, *args, **kwargs)
            return
        if args or kwargs:
            raise ValueError("fast_path.fused_forward runs one plain backward per iteration; "
                             "manual_backward options are not supported there")
        self._deferred_backward.add(loss)

    # ----------------------------------------------------------------- evaluation
    # ----------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Besides Lightning's state: the poly horizon, the run of skipped iterations and every
        rank's global RNG states. Under DDP the ranks' BN running statistics are averaged first,
        in place (the state dict Lightning collected shares these tensors): a resumed run gives
        every rank the checkpoint's statistics, so the run left alone must hold those too."""
        if self.poly_horizon is not None:
            checkpoint[POLY_HORIZON_KEY] = self.poly_horizon
        checkpoint[CONSECUTIVE_SKIPS_KEY] = self.consecutive_skips
        self.average_bn_statistics()
        checkpoint[RNG_STATES_KEY] = rank_rng_states(
            self.trainer.world_size if self._trainer is not None else 1)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        rename_legacy_keys(checkpoint.get("state_dict") or {})
        problem = checkpoint_mismatch(self.state_dict(), checkpoint, type(self).__name__,
                                      self.num_classes, type(self.segmenter).__name__)
        if problem:
            raise CheckpointError(problem)
        self.trained_iterations = int(checkpoint.get("global_step", 0))
        if self._trainer is None or self.trainer.state.fn != "fit":
            return
        rng_states = checkpoint.get(RNG_STATES_KEY) or []
        if len(rng_states) == self.trainer.world_size:
            restore_rng_states(rng_states[self.trainer.global_rank])
        self.consecutive_skips = int(checkpoint.get(CONSECUTIVE_SKIPS_KEY, 0))
        saved_horizon = checkpoint.get(POLY_HORIZON_KEY)
        if saved_horizon and saved_horizon != self.max_iters:
            rank_zero_warn(horizon_change_warning(
                self.trained_iterations, saved_horizon, self.max_iters, self.optim_config))

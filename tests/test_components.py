"""Components on their own, without a LightningModule: the evaluator, and the deprecated
CrossDomainMixing entry point that builds DACS or CIM from the earlier arguments."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import tiny_data, tiny_method, tiny_segmenter
from udaseg.evaluation import Inference, SegmentationEvaluator
from udaseg.methods import CIM, DACS, TUFL, CrossDomainMixing
from udaseg.models import SegmenterWeights


def one_hot_logits(predictions: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(predictions, num_classes).permute(0, 3, 1, 2).float()


def test_evaluator_processes_batches_and_computes_iou_over_subsets():
    evaluator = SegmentationEvaluator(3, ignore_index=255, class_names=["a", "b", "c"],
                                      subsets={"mIoU": [0, 1, 2], "mIoU-2": [0, 1]})
    labels = torch.tensor([[[0, 0, 1, 255]]])
    predictions = torch.tensor([[[0, 1, 1, 2]]])
    evaluator.process("val", one_hot_logits(predictions, 3), labels)
    evaluator.process("val", one_hot_logits(torch.tensor([[[2]]]), 3), torch.tensor([[[2]]]))
    metrics = evaluator.compute("val")
    # a: TP 1, FN 1 -> 1/2; b: TP 1, FP 1 -> 1/2; c: TP 1 (the ignored pixel's 2 not counted).
    assert metrics["IoU/a"] == pytest.approx(50.0) and metrics["IoU/b"] == pytest.approx(50.0)
    assert metrics["IoU/c"] == pytest.approx(100.0)
    assert metrics["mIoU"] == pytest.approx(200 / 3) and metrics["mIoU-2"] == pytest.approx(50.0)
    assert evaluator.results["val"] == metrics
    assert evaluator.matrices["val"] == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    assert evaluator.confusion["val"].compute().sum() == 0          # starts again from zero
    assert "test" not in evaluator.results
    assert not evaluator.state_dict()                                # nothing checkpointed


def test_evaluator_predicts_under_the_test_time_options():
    """With a flip, the class probabilities are the mean of the image's and of its mirror's
    (flipped back): a network whose logit grows with the column gives mirrored columns the same
    prediction."""
    def logits_at(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        column = torch.arange(images.shape[-1], dtype=torch.float32).expand(1, *size)
        return torch.stack([column, torch.zeros_like(column)], dim=1)

    images = torch.zeros(1, 3, 1, 4)
    plain = SegmentationEvaluator(2).predict(logits_at, images, (1, 4))
    flipped = SegmentationEvaluator(2, inference=Inference(flip=True)).predict(
        logits_at, images, (1, 4))
    assert plain[0, 0, 0].tolist() == [0, 1, 2, 3]
    column = torch.arange(4, dtype=torch.float32)
    expected = torch.log((torch.sigmoid(column) + torch.sigmoid(column.flip(0))) / 2)
    assert torch.allclose(flipped[0, 0, 0], expected, atol=1e-6)


def test_evaluator_refuses_class_names_of_another_length():
    with pytest.raises(ValueError, match="class_names has 2 entries, num_classes is 3"):
        SegmentationEvaluator(3, class_names=["a", "b"])


def test_cross_domain_mixing_builds_dacs_or_cim_from_the_earlier_arguments(tmp_path):
    with pytest.warns(DeprecationWarning, match="DACS or udaseg.methods.CIM"):
        dacs = CrossDomainMixing(teacher="ema", lambda_ufl=0.0, long_tail_p=0.0,
                                 class_weights="none", lambda_mix=1.0, teacher_bn=None,
                                 **tiny_arguments(DACS))
    assert type(dacs) is DACS and dacs.teacher.bn == "train"
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="use udaseg.methods"):
        CrossDomainMixing(teacher="ema", lambda_ufl=0.08, **tiny_arguments(DACS))
    stage_one = tmp_path / "stage1.ckpt"
    torch.save({"state_dict": tiny_method(TUFL).state_dict()}, stage_one)
    with pytest.warns(DeprecationWarning):
        cim = CrossDomainMixing(teacher="frozen", long_tail_p=0.3,
                                weights=SegmenterWeights(init_checkpoint=str(stage_one)),
                                **tiny_arguments(CIM))
    assert type(cim) is CIM and cim.long_tail.probability == 0.3
    from udaseg.methods.mixing import CrossDomainMixing as earlier_path
    assert earlier_path is CrossDomainMixing


def tiny_arguments(method_class: type) -> dict:
    """The label space and tiny network `tiny_method` would give `method_class`."""
    data = tiny_data()
    return {"num_classes": data.num_classes, "class_names": list(data.class_names),
            "segmenter": tiny_segmenter(method_class=method_class)}

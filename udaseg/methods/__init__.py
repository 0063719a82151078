"""UDA methods: LightningModules on one shared base."""

from udaseg.methods.base import OptimConfig, SegmenterConfig, UDAMethod, poly_lr
from udaseg.methods.source_only import SourceOnly

__all__ = ["OptimConfig", "SegmenterConfig", "SourceOnly", "UDAMethod", "poly_lr"]

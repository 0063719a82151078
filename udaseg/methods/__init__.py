"""UDA methods: LightningModules on one shared base."""

from udaseg.methods.adversarial import AdversarialMethod
from udaseg.methods.advent import AdvEnt, MinEnt
from udaseg.methods.ensemble import Ensemble
from udaseg.methods.base import OptimConfig, SegmenterConfig, UDAMethod, poly_lr
from udaseg.methods.source_only import SourceOnly

__all__ = ["AdvEnt", "AdversarialMethod", "Ensemble", "MinEnt", "OptimConfig", "SegmenterConfig",
           "SourceOnly", "UDAMethod", "poly_lr"]

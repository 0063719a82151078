"""UDA methods: LightningModules on one shared base (`UDAMethod`), each a composition of the
components in `udaseg.adaptation`."""

from udaseg.methods.advent import AdvEnt, MinEnt
from udaseg.methods.adversarial import OutputSpaceAdversarial
from udaseg.methods.base import OptimConfig, UDAMethod, poly_lr
from udaseg.methods.cim import CIM
from udaseg.methods.clan import CLAN
from udaseg.methods.compat import CrossDomainMixing
from udaseg.methods.conservative import ConservativeLoss
from udaseg.methods.dacs import DACS
from udaseg.methods.daformer import DAFormer
from udaseg.methods.ensemble import Ensemble
from udaseg.methods.maxsquare import MaxSquare
from udaseg.methods.segmentation_module import SegmentationModule
from udaseg.methods.source_only import SourceOnly
from udaseg.methods.tufl import TUFL

__all__ = ["AdvEnt", "CIM", "CLAN", "ConservativeLoss", "CrossDomainMixing", "DACS",
           "DAFormer",
           "Ensemble", "MaxSquare", "MinEnt", "OptimConfig", "OutputSpaceAdversarial",
           "SegmentationModule", "SourceOnly", "TUFL", "UDAMethod", "poly_lr"]

"""UDA methods: LightningModules on one shared base."""

from udaseg.methods.advent import AdvEnt, MinEnt
from udaseg.methods.adversarial import AdversarialMethod, OutputSpaceAdversarial
from udaseg.methods.base import OptimConfig, UDAMethod, poly_lr
from udaseg.methods.clan import CLAN
from udaseg.methods.conservative import ConservativeLoss
from udaseg.methods.ensemble import Ensemble
from udaseg.methods.maxsquare import MaxSquare
from udaseg.methods.mixing import CrossDomainMixing
from udaseg.methods.source_only import SourceOnly
from udaseg.methods.tufl import TUFL

__all__ = ["AdvEnt", "AdversarialMethod", "CLAN", "ConservativeLoss", "CrossDomainMixing",
           "Ensemble", "MaxSquare", "MinEnt", "OptimConfig", "OutputSpaceAdversarial",
           "SourceOnly", "TUFL", "UDAMethod", "poly_lr"]

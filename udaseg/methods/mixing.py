"""Deprecated import path, kept for one release: use `udaseg.methods.DACS` or
`udaseg.methods.CIM` (`CrossDomainMixing` builds either from the earlier arguments)."""

from udaseg.methods.compat import CrossDomainMixing

__all__ = ["CrossDomainMixing"]

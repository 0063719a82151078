"""Names of earlier releases, kept for one release."""

from __future__ import annotations

import warnings

from udaseg.methods.base import UDAMethod
from udaseg.methods.cim import CIM
from udaseg.methods.dacs import DACS

#: CrossDomainMixing arguments that DACS does not have, and the values that meant "DACS".
_DACS_SWITCHES = {"lambda_ufl": 0.0, "long_tail_p": 0.0, "class_weights": "none"}


def CrossDomainMixing(teacher: str = "frozen", **kwargs) -> UDAMethod:  # noqa: N802
    """Deprecated, kept for one release: DACS and CIM are their own methods now.

    Builds `DACS` from the old arguments when they described it (`teacher="ema"`, `lambda_ufl`
    and `long_tail_p` 0, `class_weights="none"`), else `CIM` (`teacher="frozen"`).
    """
    warnings.warn("udaseg.methods.CrossDomainMixing is deprecated: use udaseg.methods.DACS or "
                  "udaseg.methods.CIM", DeprecationWarning, stacklevel=2)
    if kwargs.get("teacher_bn", "") is None:   # None meant the teacher's official mode
        del kwargs["teacher_bn"]
    if teacher == "ema":
        switched = {key: kwargs.pop(key, None) for key in _DACS_SWITCHES}
        if switched != _DACS_SWITCHES:
            raise ValueError("CrossDomainMixing(teacher='ema') is DACS: lambda_ufl 0, "
                             "long_tail_p 0 and class_weights 'none'; use udaseg.methods.DACS")
        for meaningless in ("long_tail_classes", "long_tail_count", "long_tail_sampling"):
            kwargs.pop(meaningless, None)
        return DACS(**kwargs)
    if teacher != "frozen":
        raise ValueError(f"teacher must be 'frozen' or 'ema', got {teacher!r}")
    kwargs.pop("ema_momentum", None)
    return CIM(**kwargs)

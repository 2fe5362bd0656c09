"""Deprecated: the old path of :mod:`regzoo.sweeping` (importing it warns)."""

from regzoo._deprecation import deprecated_module

deprecated_module(__name__, "regzoo.sweeping")

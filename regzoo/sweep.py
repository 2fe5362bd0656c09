"""Deprecated: the old path of [`regzoo.sweeping`][regzoo.sweeping] (importing it warns)."""

from regzoo._deprecation import deprecated_module

deprecated_module(__name__, "regzoo.sweeping")

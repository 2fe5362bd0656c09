"""Deprecated: the old path of [`regzoo.training`][regzoo.training] (importing it warns)."""

from regzoo._deprecation import deprecated_module

deprecated_module(__name__, "regzoo.training")

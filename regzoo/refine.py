"""Deprecated: the old path of [`regzoo.refinement`][regzoo.refinement] (importing it warns)."""

from regzoo._deprecation import deprecated_module

deprecated_module(__name__, "regzoo.refinement", "regzoo.cli.refine_flags")

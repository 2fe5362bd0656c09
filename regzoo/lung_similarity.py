"""Deprecated: the old path of MIND-SSC, NGF and MI, now in [`regzoo.similarity`][regzoo.similarity]
([`descriptor`][regzoo.similarity.descriptor], [`gradient`][regzoo.similarity.gradient],
[`information`][regzoo.similarity.information]); importing it warns."""

from regzoo._deprecation import deprecated_module

deprecated_module(__name__, "regzoo.similarity")

"""Deprecated: the old path of MIND-SSC, NGF and MI, now in :mod:`regzoo.similarity`
(:mod:`~regzoo.similarity.descriptor`, :mod:`~regzoo.similarity.gradient`,
:mod:`~regzoo.similarity.information`); importing it warns."""

from regzoo._deprecation import deprecated_module

deprecated_module(__name__, "regzoo.similarity")

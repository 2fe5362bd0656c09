"""Deprecated: the old path of [`regzoo.registration_model`][regzoo.registration_model] (what a
model is), [`regzoo.lightning_module`][regzoo.lightning_module] (how it is trained) and
[`regzoo.checkpoint`][regzoo.checkpoint] (how it is stored); importing it warns."""

from regzoo._deprecation import deprecated_module

deprecated_module(
    __name__, "regzoo.registration_model", "regzoo.lightning_module", "regzoo.checkpoint"
)

"""Reusable checks for regularizers and similarities, built-in or plugins, split by job.

- [`regzoo.testing.contract`][regzoo.testing.contract]:
  [`check_regularizer`][regzoo.testing.contract.check_regularizer], the contract on fixed examples
  (parameter space, shapes in 2D and 3D, translation, units, per-sample parameters, gradients);
- [`regzoo.testing.properties`][regzoo.testing.properties]:
  [`check_regularizer_properties`][regzoo.testing.properties.check_regularizer_properties] and
  [`check_similarity_properties`][regzoo.testing.properties.check_similarity_properties], the same
  rules on random examples (they need `hypothesis <https://hypothesis.readthedocs.io>`_);
- [`regzoo.testing.strategies`][regzoo.testing.strategies]: the random fields, images and parameters
  they draw ([`displacement_fields`][regzoo.testing.strategies.displacement_fields],
  [`parameter_values`][regzoo.testing.strategies.parameter_values]), public for a plugin's own
  properties;
- [`regzoo.testing.plugin`][regzoo.testing.plugin]: the ``regularizer_contract`` pytest fixture, for
  projects that opt in (``pytest_plugins = ["regzoo.testing.plugin"]`` in their top-level
  ``conftest.py``).

Nothing here imports pytest or hypothesis at import time, and regzoo installs no pytest plugin:
a pytest run of an unrelated project never loads regzoo::

    from regzoo.testing import check_regularizer

    def test_my_regularizer():
        check_regularizer(MyRegularizer)
"""

from regzoo.testing.contract import check_regularizer, check_spacing, constant_maps, spacing_factor
from regzoo.testing.properties import check_regularizer_properties, check_similarity_properties
from regzoo.testing.strategies import (
    FieldSpec,
    ImagePairSpec,
    displacement_fields,
    parameter_values,
    random_smooth_field,
)

__all__ = [
    "FieldSpec",
    "ImagePairSpec",
    "check_regularizer",
    "check_regularizer_properties",
    "check_similarity_properties",
    "check_spacing",
    "constant_maps",
    "displacement_fields",
    "parameter_values",
    "random_smooth_field",
    "spacing_factor",
]

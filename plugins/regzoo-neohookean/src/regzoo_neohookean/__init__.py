"""A compressible Neo-Hookean (hyperelastic) regularizer for regzoo.

Installed, it registers as ``neo_hookean_example`` through the ``regzoo.regularizers`` entry point.
"""

from regzoo_neohookean.energy import NeoHookean, NeoHookeanOptions, neo_hookean_energy

__all__ = ["NeoHookean", "NeoHookeanOptions", "neo_hookean_energy"]

"""Image similarity losses (lower is better), registered like the regularizers.

One package: the base class, its registry and ``bind_fixed`` (:mod:`~regzoo.similarity.base`);
local similarities LNCC and MSE (:mod:`~regzoo.similarity.local`); the descriptor similarity
MIND-SSC (:mod:`~regzoo.similarity.descriptor`); the gradient similarity NGF
(:mod:`~regzoo.similarity.gradient`); mutual information (:mod:`~regzoo.similarity.information`);
sums and pyramids of them and the text that spells them (:mod:`~regzoo.similarity.combinations`).
Importing the package registers every built-in similarity (``lncc``, ``mse``, ``mind_ssc``,
``ngf``, ``mi``). Third-party similarities register through the entry-point group
``regzoo.similarities`` or :func:`similarity`.
"""

from regzoo.similarity.base import SIMILARITIES, Similarity, box_filter, similarity
from regzoo.similarity.combinations import MultiScale, WeightedSum, parse_similarity
from regzoo.similarity.descriptor import MINDSSC, DescriptorSimilarity, mind_ssc, ssc_offsets
from regzoo.similarity.gradient import NGF, normalized_gradient
from regzoo.similarity.information import MI, mutual_information
from regzoo.similarity.local import LNCC, MSE

__all__ = [
    "LNCC",
    "MI",
    "MINDSSC",
    "MSE",
    "NGF",
    "SIMILARITIES",
    "DescriptorSimilarity",
    "MultiScale",
    "Similarity",
    "WeightedSum",
    "box_filter",
    "mind_ssc",
    "mutual_information",
    "normalized_gradient",
    "parse_similarity",
    "similarity",
    "ssc_offsets",
]

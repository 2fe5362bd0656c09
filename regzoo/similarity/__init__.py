"""Image similarity losses (lower is better), registered like the regularizers.

One package: the base class, its registry and ``bind_fixed`` ([`base`][regzoo.similarity.base]);
local similarities LNCC and MSE ([`local`][regzoo.similarity.local]); the descriptor similarity
MIND-SSC ([`descriptor`][regzoo.similarity.descriptor]); the gradient similarity NGF
([`gradient`][regzoo.similarity.gradient]); mutual information
([`information`][regzoo.similarity.information]); sums and pyramids of them and the text that spells
them ([`combinations`][regzoo.similarity.combinations]). Importing the package registers every
built-in similarity (``lncc``, ``mse``, ``mind_ssc``, ``ngf``, ``mi``). Third-party similarities
register through the entry-point group ``regzoo.similarities`` or
[`similarity`][regzoo.similarity.base.similarity].
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

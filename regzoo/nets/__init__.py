"""Networks: hyper-layers, FiLM modulation, the hypernetwork and the VoxelMorph registration U-Net."""

from regzoo.nets.film import FiLM
from regzoo.nets.hyper import HyperConv, HyperNetwork
from regzoo.nets.unet import RegistrationNet, RegistrationOutput, VoxelMorphUNet

__all__ = [
    "FiLM",
    "HyperConv",
    "HyperNetwork",
    "RegistrationNet",
    "RegistrationOutput",
    "VoxelMorphUNet",
]

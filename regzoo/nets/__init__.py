"""Networks: hyper-layers, the hypernetwork and the VoxelMorph registration U-Net."""

from regzoo.nets.hyper import HyperConv, HyperNetwork
from regzoo.nets.unet import RegistrationNet, RegistrationOutput, VoxelMorphUNet

__all__ = ["HyperConv", "HyperNetwork", "RegistrationNet", "RegistrationOutput", "VoxelMorphUNet"]

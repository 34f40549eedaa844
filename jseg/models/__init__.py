"""SegNeXt models: the MSCAN encoder, the LightHamHead decoder and the EncoderDecoder segmentor."""
from .builder import BACKBONES, HEADS, build_backbone, build_head, build_model
from .ham_head import NMF2D, Hamburger, LightHamHead
from .losses import CrossEntropyLoss, accuracy, cross_entropy
from .mscan import MSCAN, MSCAN_SETTINGS, mscan_variant
from .segmentor import EncoderDecoder, slide_windows

__all__ = ["build_model", "build_backbone", "build_head", "BACKBONES", "HEADS",
           "MSCAN", "MSCAN_SETTINGS", "mscan_variant", "NMF2D", "Hamburger", "LightHamHead",
           "EncoderDecoder", "slide_windows", "CrossEntropyLoss", "cross_entropy", "accuracy"]

"""CodeEnhance low-light enhancement network: a faithful, export-ready re-implementation."""
from contract.provenance import TOOLKIT_VERSION

from .checkpoint import CheckpointError, load_model, read_state_dict, save_demo_checkpoint
from .config import OFFICIAL, TINY, CodeEnhanceConfig
from .network import CodeEnhance
from .padding import flip_pad_to_multiple, padded_size
from .pretrained import load_trained, trained_checkpoint
from .quantizer import nearest_code

__version__ = TOOLKIT_VERSION

__all__ = [
    "CheckpointError",
    "CodeEnhance",
    "CodeEnhanceConfig",
    "OFFICIAL",
    "TINY",
    "flip_pad_to_multiple",
    "load_model",
    "load_trained",
    "nearest_code",
    "padded_size",
    "read_state_dict",
    "save_demo_checkpoint",
    "trained_checkpoint",
    "__version__",
]

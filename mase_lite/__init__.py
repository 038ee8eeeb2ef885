"""mase-lite: compression-aware neural architecture search over torch.fx graphs of transformer models."""

from .config import Config
from .errors import ConfigError, DataError, MaseError, PassError, TraceError
from .graph import MaseGraph, trace
from .metadata import NodeMeta, to_networkx

__all__ = ["Config", "ConfigError", "DataError", "MaseError", "MaseGraph", "NodeMeta", "PassError",
           "TraceError", "to_networkx", "trace"]
__version__ = "0.1.0"

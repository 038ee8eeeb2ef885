"""Number formats, one registered class per file (see :mod:`passes.formats.base`).

Importing this package registers every built-in format; adding a format is one module here (plus
its import line below) and its tests.
"""

from .base import (
    ROLES,
    STE_MODES,
    FormatConfig,
    NumberFormat,
    format_config_from_dict,
    format_from_dict,
    format_from_spec,
    format_names,
    get_config_cls,
    get_format,
    register_format,
)
from . import integer  # noqa: F401,E402
from . import scaled_integer  # noqa: F401,E402
from . import minifloat  # noqa: F401,E402
from . import block_fp  # noqa: F401,E402
from . import dynamic_int8  # noqa: F401,E402

__all__ = ["ROLES", "STE_MODES", "FormatConfig", "NumberFormat", "format_config_from_dict", "format_from_dict",
           "format_from_spec", "format_names", "get_config_cls", "get_format", "register_format"]

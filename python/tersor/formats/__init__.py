"""Packed weight formats: one module per scheme (pack, unpack, canonical state_dict form) and
one format object per scheme (formats/base.py) that the layers hold."""

from tersor.formats.base import WeightFormat
from tersor.formats.int4 import (
    Int4Format,
    PackedInt4,
    dequantize_int4,
    from_awq,
    from_gptq,
    pack_int4,
    quantize_int4,
    unpack_int4,
)
from tersor.formats.int8 import (
    Int8Format,
    PackedInt8,
    pack_int8,
    quantize_per_channel_int8,
    unpack_int8,
)
from tersor.formats.sparse24 import Sparse24Format
from tersor.formats.sparse_block import BlockFormat
from tersor.formats.sparse_csr import CsrFormat

# scheme name -> (format class, options for ``empty``): how a layer built from a scheme name
# (QLinear(..., scheme="w4"), old checkpoints) finds its format
SCHEMES = {
    "w8a8": (Int8Format, {"act_int8": True}),
    "w8": (Int8Format, {"act_int8": False}),
    "w4a8": (Int4Format, {"act_int8": True}),
    "w4": (Int4Format, {"act_int8": False}),
    "2:4": (Sparse24Format, {}),
    "2:4+w8a8": (Sparse24Format, {"int8": True}),
    "unstructured": (CsrFormat, {}),
    "unstructured+w8a8": (CsrFormat, {"int8": True}),
    "block": (BlockFormat, {}),
    "block+w8a8": (BlockFormat, {"int8": True}),
}

__all__ = [
    "SCHEMES",
    "BlockFormat",
    "CsrFormat",
    "Int4Format",
    "Int8Format",
    "PackedInt4",
    "PackedInt8",
    "Sparse24Format",
    "WeightFormat",
    "dequantize_int4",
    "from_awq",
    "from_gptq",
    "pack_int4",
    "pack_int8",
    "quantize_int4",
    "quantize_per_channel_int8",
    "unpack_int4",
    "unpack_int8",
]

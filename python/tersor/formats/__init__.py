"""Packed weight formats: one module per scheme (pack, unpack, canonical state_dict form)."""
from tersor.formats.int4 import (PackedInt4, dequantize_int4, from_awq, from_gptq, pack_int4,
                                 quantize_int4, unpack_int4)
from tersor.formats.int8 import PackedInt8, pack_int8, quantize_per_channel_int8, unpack_int8

__all__ = ["PackedInt4", "PackedInt8", "dequantize_int4", "from_awq", "from_gptq", "pack_int4",
           "pack_int8", "quantize_int4", "quantize_per_channel_int8", "unpack_int4",
           "unpack_int8"]

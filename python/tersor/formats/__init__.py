"""Packed weight formats: one module per scheme (pack, unpack, canonical state_dict form)."""
from tersor.formats.int8 import PackedInt8, pack_int8, quantize_per_channel_int8, unpack_int8

__all__ = ["PackedInt8", "pack_int8", "quantize_per_channel_int8", "unpack_int8"]

from tersor.nn.linear import BlockSparseLinear, CsrLinear, PackedLinear, QLinear, SparseLinear
from tersor.nn.qconv import QConv2d

__all__ = ["BlockSparseLinear", "CsrLinear", "PackedLinear", "QConv2d", "QLinear", "SparseLinear"]

from tersor.nn.block_linear import BlockSparseLinear
from tersor.nn.csr_linear import CsrLinear
from tersor.nn.qconv import QConv2d
from tersor.nn.qlinear import QLinear
from tersor.nn.sparse_linear import SparseLinear

__all__ = ["BlockSparseLinear", "CsrLinear", "QConv2d", "QLinear", "SparseLinear"]

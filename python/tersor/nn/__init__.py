from tersor.nn.qconv import QConv2d
from tersor.nn.qlinear import QLinear
from tersor.nn.sparse_linear import SparseLinear

__all__ = ["QConv2d", "QLinear", "SparseLinear"]

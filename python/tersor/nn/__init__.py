from tersor.nn.qconv import QConv2d
from tersor.nn.qlinear import QLinear

__all__ = ["QConv2d", "QLinear"]

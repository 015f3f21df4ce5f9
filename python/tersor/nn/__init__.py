from tersor.nn.qlinear import QLinear

__all__ = ["QLinear"]

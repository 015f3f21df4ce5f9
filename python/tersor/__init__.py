"""tersor: native kernels that make compressed PyTorch models run faster.

    import tersor
    report = tersor.quantize_(model, tersor.W8A8Config())
    print(report)
"""
from tersor._backend import available_isas, cpu_info
from tersor.api import LayerReport, Report, quantize_
from tersor.configs import W4A8Config, W4Config, W8A8Config, W8Config
from tersor.nn import QConv2d, QLinear

__version__ = "0.1.0"

__all__ = ["LayerReport", "QConv2d", "QLinear", "Report", "W4A8Config", "W4Config", "W8A8Config", "W8Config",
           "available_isas", "cpu_info", "quantize_"]

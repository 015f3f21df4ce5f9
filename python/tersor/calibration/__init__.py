"""Calibration: data-driven choices of the compressed weights.

data.py    what ``calibration=`` may be (tensor, batches, DataLoader, callable)
blocks.py  the block-by-block driver (one transformer block's activations in memory)
gptq.py    GPTQ for the int4 / int8 grids (``method="gptq"`` on the quantization configs)
"""

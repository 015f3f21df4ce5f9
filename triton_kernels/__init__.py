"""Triton kernels, installed as ``tersor.triton_kernels`` (Triton itself owns the top-level name
``triton_kernels``). Empty until the GPU issue lands its kernels here."""

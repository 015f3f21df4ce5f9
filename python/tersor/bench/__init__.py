"""Microbenchmarks shared by ``python -m tersor.bench`` and the pytest-benchmark suite in bench/.

Every implementation (ours and the baselines) is built from the same float weights, checked for
correctness once, then timed side by side in one run with rotated weight copies.
"""

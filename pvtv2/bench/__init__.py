"""Benchmarks of our models against timm's and HF transformers' with the same weights (``pvt bench``).

``suite.py`` says what is measured; ``timing.py``, ``memory.py`` and ``machine.py`` how; ``peers.py``
builds the other implementations; ``report.py`` writes the JSON and the plot.
"""

from .report import write_results
from .suite import BenchConfig, run_suite

__all__ = ["BenchConfig", "run_suite", "write_results"]

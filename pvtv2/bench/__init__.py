"""Benchmarks of our models against timm's and HF transformers' with the same weights (``pvt bench``).

``suite.py`` says what is measured; ``timing.py``, ``memory.py`` and ``machine.py`` how; ``peers.py``
builds the other implementations; ``report.py`` writes the JSON and the plot; ``tables.py`` formats the
tables ``pvt bench`` prints.
"""

from .report import write_results
from .suite import BenchConfig, run_suite
from .tables import format_report

__all__ = ["BenchConfig", "format_report", "run_suite", "write_results"]

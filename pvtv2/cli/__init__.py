"""The ``pvt`` command: a thin layer over the Python API, one module per subcommand.

A subcommand module defines ``add_parser(subparsers)``, which adds its parser and sets
``handler=run``, and ``run(args) -> int``; :mod:`pvtv2.cli.main` lists the modules.
"""

from .main import main

__all__ = ["main"]

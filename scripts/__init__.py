"""Command-line scripts, each run as `python -m scripts.NAME` (its docstring has the exact command)."""

from minivision_hf.extras import install_excepthook

install_excepthook()  # a script stopped by a missing optional dependency ends with the extra to install

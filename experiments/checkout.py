"""Which checkout a script runs: a venv installed (editable) from another clone imports that clone's package, whose
code then runs and writes into its folders. ``warn_if_elsewhere(__file__)`` says so in one line."""

from __future__ import annotations

import sys
from pathlib import Path


def package_root() -> Path:
    """The checkout the imported ``experiments`` package belongs to."""
    import experiments

    return Path(experiments.__file__).resolve().parent.parent


def warn_if_elsewhere(script: str) -> bool:
    """One line on stderr when ``script`` (a file under ``<checkout>/experiments/``) imports the package of another
    checkout; returns whether it did."""
    here = Path(script).resolve().parent.parent
    imported = package_root()
    if here == imported:
        return False
    print(f"warning: {Path(script).name} is in {here} but imports the package of {imported} (the venv was installed "
          f"from there): that checkout's code runs; reinstall with `make venv` here, or run it from {imported}",
          file=sys.stderr)
    return True

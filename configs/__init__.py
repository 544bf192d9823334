"""Recipes: one ml_collections config file per experiment.

Each recipe's docstring gives its command and expected result; run one by name
from any directory, e.g. `python -m experiments.imp --config=mnist1d:quick
--workdir=...` (`--help` lists them all). This file makes configs/ an
installed package, so the recipes ship with a (non-editable) install.
"""

# Not a recipe: no arguments, so loops over every file's ARGS skip it.
ARGS = ()

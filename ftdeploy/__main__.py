"""``python -m ftdeploy`` runs the command line (used where no console script is installed)."""

from .cli import main

main()

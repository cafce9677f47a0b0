"""``python -m tdxfl`` runs the command line."""

from tdxfl.cli import main

main()

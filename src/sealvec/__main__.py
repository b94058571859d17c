"""``python -m sealvec`` runs the command line."""

from sealvec.cli import main

main()

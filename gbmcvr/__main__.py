"""`python -m gbmcvr` runs the command line (tune workers are started this way)."""

from gbmcvr.cli import main

main()

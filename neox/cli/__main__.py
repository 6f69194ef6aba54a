"""`python -m neox.cli`: the `neox` command without its console script."""

from neox.cli import main

main()

"""`python -m nextham_dft ...`: the same commands as the `nextham-dft` script."""

from .cli import main

main(prog_name="nextham-dft")

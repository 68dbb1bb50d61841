"""`python -m exmachina.supervisor --config X`.

A package `__main__` on purpose: multiprocessing re-runs a plain main module in every child it
starts, but skips a `__main__` of a package; so 1,000 neurons do not each re-import the CLI stack.
"""

import typer

from exmachina.supervisor import main

typer.run(main)

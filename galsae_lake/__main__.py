"""``python -m galsae_lake`` runs the command line."""

from galsae_lake.cli import main

main(prog_name="galsae-lake")

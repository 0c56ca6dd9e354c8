"""``python -m sigma_db`` runs the ``sigma-db`` command."""

from sigma_db.cli import main

main()

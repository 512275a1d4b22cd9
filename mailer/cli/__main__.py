"""``python -m mailer.cli`` runs the ``mailer`` command."""

from mailer.cli import main

main()

"""``python -m rmtkd`` runs the ``rmtkd`` command (also under ``torchrun -m rmtkd``)."""
import sys

from rmtkd.app.cli import main

sys.exit(main())

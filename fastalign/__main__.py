"""``python -m fastalign``: the ``fastalign`` command (see :mod:`fastalign.cli`); also what
``torchrun -m fastalign`` runs in each process."""

import sys

from fastalign.cli import entry

if __name__ == "__main__":
    sys.exit(entry())

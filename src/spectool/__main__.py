"""``python -m spectool`` and ``torchrun -m spectool train ...``."""

from spectool.cli.app import main

if __name__ == "__main__":
    main()

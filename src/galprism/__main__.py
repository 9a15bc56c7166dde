"""``python -m galprism`` (and ``torchrun -m galprism``): the ``galprism`` command."""

from galprism.cli.main import main

if __name__ == "__main__":
    main()

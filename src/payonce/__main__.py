"""``python -m payonce``: the command line, the same as the ``payonce`` script."""

from payonce.cli import main

if __name__ == "__main__":
    main()

"""``python -m resnetlab``: the same command line as the ``resnetlab`` script."""

from .cli import run

if __name__ == "__main__":
    run()

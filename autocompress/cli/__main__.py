"""``python -m autocompress.cli ...``: the same command line, as the REST API's job launcher starts it."""

from autocompress.cli import app

if __name__ == "__main__":
    app()

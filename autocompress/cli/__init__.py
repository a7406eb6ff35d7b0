"""The ``autocompress`` command line: generate data, train and evaluate models, search, serve, call the API.

This package only assembles ``app`` (the ``autocompress`` entry point) from one module per command
group: :mod:`~autocompress.cli.train` (``train``, ``evaluate``, ``data``), :mod:`~autocompress.cli.search`
(``run``, ``search``, ``report``), :mod:`~autocompress.cli.remote` (``jobs``, ``models``) and
:mod:`~autocompress.cli.serve` (``serve``, ``predict``). Those import only :mod:`autocompress.cli._common`
and library code, never this module or each other. Every error a user can cause is printed as one
line naming the field or file, with exit code 2; no traceback. Importing the package imports
neither torch nor Ray: the commands import them when they run.
"""

from __future__ import annotations

import typer

from autocompress.cli import remote, search, serve, train

__all__ = ["app"]

app = typer.Typer(
    help="Compress e-commerce ranking and retrieval models under a latency budget.", no_args_is_help=True
)
# the order here is the order ``autocompress --help`` lists the commands in
app.command()(search.run)
app.command()(train.train)
app.command()(train.evaluate)
app.command()(search.search)
app.command()(search.report)
app.command()(serve.serve)
app.command()(serve.predict)
app.add_typer(train.data_app, name="data")
app.add_typer(remote.jobs_app, name="jobs")
app.add_typer(remote.models_app, name="models")

"""The ``edgepanc`` command line: one click group, one module per subcommand.

Heavy stages (training, quantization) are imported inside their commands, so ``run``,
``evaluate`` and ``doctor`` work without them.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading

import click

from edgepanc import __version__
from edgepanc.errors import EdgepancError


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


class _Group(click.Group):
    """Turns an :class:`EdgepancError` into one line on stderr and a non-zero exit."""

    def invoke(self, ctx: click.Context):  # noqa: D102
        # Python dies on SIGTERM (`kill`, `timeout`, a scheduler) without unwinding, which would
        # leave staging folders and temporary files behind; as SystemExit, every `finally` and
        # atomic writer cleans up. Seen: a quantize stopped by `timeout` left its staging folder.
        # The previous handler comes back afterwards (in-process callers, e.g. click's runner).
        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _exit_on_sigterm) if main_thread else None
        try:
            return super().invoke(ctx)
        except EdgepancError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        finally:
            if main_thread:
                signal.signal(signal.SIGTERM, previous)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgepanc")
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def main(verbose: bool) -> None:
    """Pancreas and lesion segmentation with subtype classification in CT."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )


# The subcommands, in the order of the pipeline. Each module keeps its heavy imports inside the
# command, so registering all of them costs only click's option parsing.
from edgepanc.commands.doctor import doctor  # noqa: E402
from edgepanc.commands.evaluate import evaluate  # noqa: E402
from edgepanc.commands.quantize import quantize  # noqa: E402
from edgepanc.commands.run import run  # noqa: E402
from edgepanc.commands.synth import synth  # noqa: E402
from edgepanc.commands.train import train  # noqa: E402

for _command in (synth, train, quantize, run, evaluate, doctor):
    main.add_command(_command)

"""The ``edgepanc`` command line: one click group, one module per subcommand.

Heavy stages (training, quantization) are imported inside their commands, so ``run``,
``evaluate`` and ``doctor`` work without them.
"""

from __future__ import annotations

import logging
import signal
import sys
import tempfile
import threading
import traceback

import click

from edgepanc.errors import EdgepancError
from edgepanc.extras import missing_extra
from edgepanc.version import __version__

# Key in click's shared context metadata under which ``--debug`` is kept for the error boundary.
_DEBUG = "edgepanc.debug"
_INTERRUPTED = 130  # the shell's code for a process stopped by SIGINT (128 + 2)
_INTERNAL = 1  # a bug or an environment failure, as opposed to a problem with the user's input


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _write_traceback(exc: BaseException) -> str | None:
    """Save ``exc``'s traceback to a new private file in the temp folder; its path, or None."""
    try:
        fd, path = tempfile.mkstemp(prefix="edgepanc-", suffix=".log")
        with open(fd, "w", encoding="utf-8") as fh:
            fh.write(f"edgepanc {__version__}: {' '.join(sys.argv)}\n")
            fh.writelines(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except OSError:
        return None
    return path


def describe_unexpected(exc: Exception, debug: bool) -> tuple[str, int]:
    """The one line and exit code for an exception that is not an :class:`EdgepancError`.

    A failing file operation names the file and exits 2 like any input error; anything else is
    an internal error (exit 1) whose traceback goes to a log file (and to stderr with ``--debug``).
    Example: ``describe_unexpected(NotADirectoryError(20, "Not a directory", "/dev/null"),
    False)`` -> ``("/dev/null: Not a directory", 2)``.
    """
    if debug:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    if isinstance(exc, OSError) and exc.filename is not None:
        # The file and the system's reason say it all; no traceback is needed to act on it.
        names = [str(n) for n in (exc.filename, exc.filename2) if n is not None]
        return ": ".join([*names, exc.strerror or _one_line(str(exc))]), 2
    log_path = None if debug else _write_traceback(exc)
    where = "" if debug else " (rerun with --debug for the traceback)"
    if log_path:
        where = f" (traceback in {log_path})"
    if isinstance(exc, OSError):
        return f"{exc.strerror or _one_line(str(exc)) or type(exc).__name__}{where}", 2
    if isinstance(exc, MemoryError):
        return f"out of memory; set --memory-budget to what this machine has{where}", _INTERNAL
    detail = _one_line(str(exc))[:300]
    name = type(exc).__name__
    return f"internal error: {name}{': ' + detail if detail else ''}{where}", _INTERNAL


class _Group(click.Group):
    """The error boundary: any exception reaching the command line becomes one line on stderr.

    An :class:`EdgepancError` prints its own message (exit 2); click's usage errors stay click's;
    Ctrl-C exits 130; anything else is described by :func:`describe_unexpected`.
    """

    def invoke(self, ctx: click.Context):  # noqa: D102
        # Python dies on SIGTERM (`kill`, `timeout`, a scheduler) without unwinding, which would
        # leave staging folders and temporary files behind; as SystemExit, every `finally` and
        # atomic writer cleans up. Seen: a quantize stopped by `timeout` left its staging folder.
        # The previous handler comes back afterwards (in-process callers, e.g. click's runner).
        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _exit_on_sigterm) if main_thread else None
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise  # usage errors and deliberate exits: click prints and exits as it should
        except EdgepancError as exc:
            click.echo(f"error: {_one_line(str(exc))}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("error: interrupted", err=True)
            sys.exit(_INTERRUPTED)
        except ModuleNotFoundError as exc:
            # An optional dependency met on the way (e.g. a bundle with torch weights alone in a
            # runtime-only install): name the extra that installs it rather than a traceback.
            missing = missing_extra(ctx.invoked_subcommand, exc)
            line, code = (
                (str(missing), missing.exit_code)
                if missing is not None
                else describe_unexpected(exc, bool(ctx.meta.get(_DEBUG)))
            )
            click.echo(f"error: {line}", err=True)
            sys.exit(code)
        except Exception as exc:
            line, code = describe_unexpected(exc, bool(ctx.meta.get(_DEBUG)))
            click.echo(f"error: {line}", err=True)
            sys.exit(code)
        finally:
            if main_thread:
                signal.signal(signal.SIGTERM, previous)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgepanc")
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
@click.option("--debug", is_flag=True, help="On an unexpected error, print its full traceback.")
@click.pass_context
def main(ctx: click.Context, verbose: bool, debug: bool) -> None:
    """Pancreas and lesion segmentation with subtype classification in CT."""
    ctx.meta[_DEBUG] = debug
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
from edgepanc.commands.summarize import summarize  # noqa: E402
from edgepanc.commands.synth import synth  # noqa: E402
from edgepanc.commands.train import train  # noqa: E402

for _command in (synth, train, quantize, run, summarize, evaluate, doctor):
    main.add_command(_command)

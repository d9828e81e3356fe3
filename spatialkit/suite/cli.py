"""The ``spatialkit`` command (also ``python -m spatialkit``).

    spatialkit run  [--profile quick|full|smoke] [--only NAME ...] [-p NAME VALUE ...] [--force] [--no-wait]
                    [--jobs N] [--no-pretrain]
    spatialkit book [same options]      # run, then build the HTML book into _build/html
    spatialkit assignments build|grade  # student notebooks / autograding (spatialkit/suite/assignments.py)
    spatialkit results [--format table|csv|json] [FOLDER ...]  # the scorecard; two folders: compared

This module imports neither torch nor papermill at import time, so a bad parameter is reported in
well under a second. To add a subcommand, call :func:`command` (see ``run`` and ``book`` below).
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from spatialkit.common.params import ParameterError

# name -> (help, add_arguments(parser), handler(args) -> exit code)
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


def command(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None]):
    """Decorator registering ``handler(args) -> int`` as ``spatialkit NAME``."""
    def register(handler):
        COMMANDS[name] = (help, add_arguments, handler)
        return handler
    return register


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default="quick", choices=("quick", "full", "smoke"),
                        help="parameter profile from spatialkit/suite/profiles.yml (quick = notebook defaults, CPU; "
                             "full = GPU)")
    parser.add_argument("--only", nargs="+", default=None, metavar="NAME", help="run only these notebooks")
    parser.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="override a parameter in every selected notebook that declares it "
                             "(VALUE is read as YAML: 5, 0.1, true, [1, 2], text)")
    parser.add_argument("--force", action="store_true", help="re-execute even if the cached copy is up to date")
    parser.add_argument("--no-wait", dest="wait", action="store_false",
                        help="fail at once (one line) instead of waiting when another run of a selected notebook "
                             "is executing")
    parser.add_argument("--jobs", "-j", type=int, default=None, metavar="N",
                        help="worker processes (default: one per core): the checkpoints the notebooks load are "
                             "trained first, N at a time, then N notebooks execute at once (one kernel each)")
    parser.add_argument("--no-pretrain", dest="pretrain", action="store_false",
                        help="do not train the notebooks' checkpoints ahead; each notebook trains what it loads")


def _plan(args: argparse.Namespace):
    from spatialkit.suite import runner

    overrides = {}
    for name, value in args.param:
        overrides[name] = runner.parse_value(value)
    return runner.plan(args.profile, args.only, overrides)


def _run(args: argparse.Namespace):
    from spatialkit.suite import runner

    jobs = _plan(args)  # validation first: a bad value never starts a kernel
    if args.jobs is not None and args.jobs < 1:
        raise ParameterError(f"--jobs {args.jobs}: must be at least 1")
    from spatialkit.suite import parallel

    return jobs, parallel.run(jobs, runner.executed_dir(), n_jobs=args.jobs, force=args.force, wait_lock=args.wait,
                              pretrain=args.pretrain, echo=lambda line: print(line, flush=True))


@command("run", "execute the notebooks with papermill into book/executed/", add_run_arguments)
def cmd_run(args: argparse.Namespace) -> int:
    _run(args)
    return 0


@command("book", "run the notebooks, then build the HTML book into _build/html", add_run_arguments)
def cmd_book(args: argparse.Namespace) -> int:
    from spatialkit.suite import book
    from spatialkit.suite import catalog

    jobs, _ = _run(args)
    ran = {job.name for job in jobs}
    older = [p.stem for p in book.chapters(list(catalog.NOTEBOOKS), book.default_root()) if p.stem not in ran]
    if older:  # e.g. after --only: say which pages come from earlier runs (maybe another profile)
        print(f"note: the book also includes earlier executed copies of: {', '.join(older)}")
    book.build(list(catalog.NOTEBOOKS))
    return 0


def _add_assignments_arguments(parser: argparse.ArgumentParser) -> None:
    from spatialkit.suite.assignments import add_arguments  # the details live in spatialkit/suite/assignments.py

    add_arguments(parser)


@command("assignments", "build student notebooks into release/, or grade a submission", _add_assignments_arguments)
def cmd_assignments(args: argparse.Namespace) -> int:
    from spatialkit.suite.assignments import cmd_assignments as assignments

    return assignments(args)


def _add_results_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folders", nargs="*", metavar="FOLDER",
                        help="folders holding NAME.results.json (default: book/executed); two or more: compared "
                             "side by side, with a column saying whether their verdicts agree")
    parser.add_argument("--format", default="table", choices=("table", "csv", "json"),
                        help="output format (default: %(default)s)")


@command("results", "print the reproduction scorecard (every claim's verdict per model) from results files",
         _add_results_arguments)
def cmd_results(args: argparse.Namespace) -> int:
    from spatialkit.suite import runner, scorecard

    try:
        print(scorecard.render(scorecard.table(args.folders or [runner.executed_dir()]), args.format), end="")
    except scorecard.ScorecardError as err:
        print(f"spatialkit: error: {err}", file=sys.stderr)
        return 1
    return 0


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; only the subcommand named in ``argv`` gets its arguments added.

    ``add_arguments`` may import its module (e.g. assignments -> nbformat -> jsonschema, seconds on a
    fresh venv), so the other subcommands' arguments are never built: `spatialkit run` stays fast.
    """
    chosen = next((a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")), None)
    parser = argparse.ArgumentParser(prog="spatialkit", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help, add_arguments, handler) in COMMANDS.items():
        p = sub.add_parser(name, help=help, description=help)
        if name == chosen:
            add_arguments(p)
        p.set_defaults(handler=handler)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser(argv).parse_args(argv)
    from spatialkit.suite.book import BookError
    from spatialkit.suite.runner import RunError

    try:
        return args.handler(args)
    except ParameterError as err:
        print(f"spatialkit: error: {err}", file=sys.stderr)
        return 2
    except (RunError, BookError) as err:
        print(f"spatialkit: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # the running notebook's copy is not published; earlier results are kept
        print("spatialkit: interrupted; nothing was published for the notebook that was running "
              "(earlier executed copies are unchanged)", file=sys.stderr)
        return 130
    except OSError as err:  # e.g. an unwritable _build/ or book/ folder: one line, not a traceback
        print(f"spatialkit: error: {err.strerror or err}{f': {err.filename}' if err.filename else ''}",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())

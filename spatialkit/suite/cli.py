"""The ``spatialkit`` command (also ``python -m spatialkit``).

    spatialkit run  [--profile quick|full|smoke] [--only NAME ...] [-p NAME VALUE ...] [--force] [--no-wait]
                    [--jobs N] [--no-pretrain]
    spatialkit book [same options]      # run, then build the HTML book into _build/html
    spatialkit assignments build|grade  # student notebooks / autograding (spatialkit/suite/assignments.py)
    spatialkit results [--format table|csv|json] [--plot DIR] [FOLDER ...]  # scorecard; two folders: compared;
                                                                           # runs/SWEEP: the sweep's points
    spatialkit sweep NAME -p NAME '[v1, v2]' ... [--file sweep.yml] [--executor local|dask]  # a parameter grid
    spatialkit store list | pack FILE | unpack FILE  # share trained checkpoints (spatialkit/suite/store.py)

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
    parser.add_argument("--only", nargs="+", action="extend", default=None, metavar="NAME",
                        help="run only these notebooks (--only A B and --only A --only B alike)")
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
    from spatialkit.suite import runner  # lazy: the CLI starts without it

    overrides = {}
    for name, value in args.param:
        overrides[name] = runner.parse_value(value)
    return runner.plan(args.profile, args.only, overrides)


def _run(args: argparse.Namespace):
    from spatialkit.suite import runner  # lazy: the CLI starts without it

    jobs = _plan(args)  # validation first: a bad value never starts a kernel
    if args.jobs is not None and args.jobs < 1:
        raise ParameterError(f"--jobs {args.jobs}: must be at least 1")
    from spatialkit.suite import parallel  # lazy: the CLI starts without it

    return jobs, parallel.run(jobs, runner.executed_dir(), n_jobs=args.jobs, force=args.force, wait_lock=args.wait,
                              pretrain=args.pretrain, echo=lambda line: print(line, flush=True))


@command("run", "execute the notebooks with papermill into book/executed/", add_run_arguments)
def cmd_run(args: argparse.Namespace) -> int:
    _run(args)
    return 0


@command("book", "run the notebooks, then build the HTML book into _build/html", add_run_arguments)
def cmd_book(args: argparse.Namespace) -> int:
    from spatialkit.suite import book  # lazy: the CLI starts without it
    from spatialkit.suite import catalog  # lazy: the CLI starts without it

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
    from spatialkit.suite.assignments import cmd_assignments as assignments  # lazy: the CLI starts without it

    return assignments(args)


def _add_results_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folders", nargs="*", metavar="FOLDER",
                        help="folders holding NAME.results.json (default: book/executed); two or more: compared "
                             "side by side, with a column saying whether their verdicts agree")
    parser.add_argument("--format", default="table", choices=("table", "csv", "json"),
                        help="output format (default: %(default)s)")
    parser.add_argument("--plot", default=None, metavar="DIR",
                        help="sweep folders (runs/SWEEP): also write one PNG per claim across the grid into DIR")


@command("results", "print the reproduction scorecard (every claim's verdict per model) from results files",
         _add_results_arguments)
def cmd_results(args: argparse.Namespace) -> int:
    from spatialkit.suite import runner, scorecard  # lazy: the CLI starts without it

    try:
        folders = args.folders or [runner.executed_dir()]
        if _sweep_folders(folders):  # runs/SWEEP: one row per point and claim (spatialkit/suite/sweep.py)
            from spatialkit.suite import sweep  # lazy: the CLI starts without it

            print(scorecard.render(sweep.results_table(folders), args.format), end="")
            for path in sweep.plot(folders, args.plot) if args.plot else ():
                print(f"wrote {path}", file=sys.stderr)
        else:
            if args.plot:
                raise scorecard.ScorecardError("--plot: only for sweep folders (runs/SWEEP)")
            print(scorecard.render(scorecard.table(folders), args.format), end="")
    except scorecard.ScorecardError as err:
        print(f"spatialkit: error: {err}", file=sys.stderr)
        return 1
    return 0


def _sweep_folders(folders) -> bool:
    """True when every folder is a sweep's (runs/SWEEP); a mix with plain result folders is an error."""
    from spatialkit.suite import scorecard, sweep  # lazy: the CLI starts without it

    kinds = [sweep.is_sweep_folder(f) for f in folders]
    if any(kinds) and not all(kinds):
        raise scorecard.ScorecardError("give either sweep folders (runs/SWEEP) or result folders, not both")
    return all(kinds)


# --- spatialkit sweep (spatialkit/suite/sweep.py) -------------------------------------------------------

def _add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("notebook", nargs="?", default=None, metavar="NAME",
                        help="the notebook (optional with --file naming it)")
    parser.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUES"),
                        help="a YAML list is an axis of the grid (-p seed '[0, 1, 2]'); a scalar a fixed value; a list "
                             "parameter's axis is a list of lists (-p organisms '[[smoke], [smoke, smoke_loud]]')")
    parser.add_argument("--file", default=None, metavar="SWEEP.yml",
                        help="a sweep file: notebook, name, profile, grid (axes), params (fixed), points")
    parser.add_argument("--profile", default=None, choices=("quick", "full", "smoke"),
                        help="parameter profile under the grid (default: the file's, else quick)")
    parser.add_argument("--name", default=None, metavar="SWEEP",
                        help="the sweep's folder under --out (default: the file's name, else the axes' names)")
    parser.add_argument("--out", default=None, metavar="DIR", help="where sweeps go (default: runs/ in the repository)")
    parser.add_argument("--executor", default="local", choices=("local", "dask"),
                        help="local: a process pool here (default); dask: Dask distributed (pip install "
                             "'spatialkit[cluster]'), a LocalCluster or the scheduler at --scheduler")
    parser.add_argument("--workers", "-j", type=int, default=None, metavar="N",
                        help="worker processes (default: one per core, or per GPU for a notebook on cuda)")
    parser.add_argument("--scheduler", default=None, metavar="ADDRESS",
                        help="dask: a running scheduler (default: $DASK_SCHEDULER_ADDRESS, else a LocalCluster)")
    parser.add_argument("--gpus-per-point", type=float, default=0, metavar="G",
                        help="dask: each point asks for resource GPU=G (start workers with --resources GPU=1)")
    parser.add_argument("--force", action="store_true", help="re-execute every point, fresh or not")
    parser.add_argument("--dry-run", action="store_true", help="validate and list the points; run nothing")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


@command("sweep", "run one notebook over a grid of parameter sets, each point into runs/SWEEP/NAME/HASH/",
         _add_sweep_arguments)
def cmd_sweep(args: argparse.Namespace) -> int:
    from spatialkit.suite import catalog, sweep  # lazy: the CLI starts without it

    spec_file = sweep.read_sweep_file(args.file) if args.file else {}
    notebook = args.notebook or spec_file.get("notebook")
    if not notebook:
        raise ParameterError("sweep: name the notebook (spatialkit sweep NAME ..., or notebook: in --file)")
    if args.notebook and spec_file.get("notebook") and args.notebook != spec_file["notebook"]:
        raise ParameterError(f"sweep: NAME {args.notebook} differs from --file's notebook {spec_file['notebook']}")
    axes, fixed = dict(spec_file.get("grid") or {}), dict(spec_file.get("params") or {})
    cli_axes, cli_fixed = sweep.split_cli(args.param, catalog.get(notebook))
    for key in [*cli_axes, *cli_fixed]:  # the command line overrides the file
        axes.pop(key, None)
        fixed.pop(key, None)
    axes.update(cli_axes)
    fixed.update(cli_fixed)
    plan = sweep.plan_sweep(notebook, axes, fixed, spec_file.get("points"),
                            profile=args.profile or spec_file.get("profile") or "quick",
                            name=args.name or spec_file.get("name"), out=args.out)
    if args.dry_run:
        for p in plan.points:
            print(f"{p.index}/{len(plan.points)} {p.folder}  {p.label()}")
        return 0
    results = sweep.run_sweep(plan, executor=args.executor, workers=args.workers, scheduler=args.scheduler,
                              gpus_per_point=args.gpus_per_point, force=args.force, progress=args.progress,
                              echo=lambda line: print(line, flush=True))
    return 1 if any(r.status == "failed" for r in results) else 0


def _add_store_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("list", "pack", "unpack"),
                        help="list: the store's checkpoints, checked against their manifests; pack FILE: every "
                             "finished checkpoint into one tar file; unpack FILE: add a packed file's checkpoints")
    parser.add_argument("file", nargs="?", metavar="FILE", help="the tar file (pack, unpack)")


@command("store", "list, pack or unpack the checkpoint store ($SPATIALKIT_CACHE): train once, share the file",
         _add_store_arguments)
def cmd_store(args: argparse.Namespace) -> int:
    from spatialkit.suite import store  # lazy: the CLI starts without it

    if args.action != "list" and not args.file:
        raise ParameterError(f"store {args.action}: FILE is required (the tar file to "
                             f"{'write' if args.action == 'pack' else 'read'})")
    try:
        if args.action == "list":
            found = store.entries()
            for e in found:
                print(f"{e.name:40s} {e.bytes / 2**20:7.2f} MiB  {e.problem or 'ok'}")
            print(f"{len(found)} checkpoint(s) in {store.root()}, {sum(e.problem is None for e in found)} intact")
            return 0
        if args.action == "pack":
            packed = store.pack(args.file)
            print(f"packed {len(packed)} checkpoint(s) into {args.file}")
            return 0
        done = store.unpack(args.file)
        print(f"unpacked {args.file} into {store.root()}: {len(done['added'])} added, "
              f"{len(done['present'])} already there, {len(done['refused'])} refused")
        return 1 if done["refused"] else 0
    except store.StoreError as err:
        print(f"spatialkit: error: {err}", file=sys.stderr)
        return 1


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
    from spatialkit.suite.book import BookError  # lazy: the CLI starts without it
    from spatialkit.suite.runner import RunError  # lazy: the CLI starts without it

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

"""The ``distillbench`` command line.

Every error a user can cause (a bad grid, an unknown name, a missing file) is printed as one line
starting with ``error:`` and exits with status 2, before anything is scheduled or written.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

from distillbench.harness.errors import EXIT_USAGE, DistillBenchError


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (argparse prints the whole usage block by default)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"error: {message} (see '{self.prog} --help')\n")


def _fmt(text: str) -> str:
    return text.strip("\n")


FOREIGN_FORMATS = "distillbench, dc-res, mtt, datm, image-folder, hf"  # harness/formats.py FORMATS; docs/formats.md


def _format_arguments(command: argparse.ArgumentParser, *, default: str) -> None:
    """``--format``, ``--dataset`` and the declarations of a foreign set's values (docs/formats.md).

    They are one group in ``--help``: a distillbench set needs none of them.
    """
    parser = command.add_argument_group("sets in another repository's format (docs/formats.md)")
    parser.add_argument(
        "--format",
        default=default,
        help=f"the set's format: auto, {FOREIGN_FORMATS}; options as 'dc-res[experiment=0]' (default {default})",
    )
    parser.add_argument("--dataset", help="foreign formats: the dataset it is evaluated on, e.g. 'cifar10[zca=true]'")
    parser.add_argument(
        "--space", choices=["pixels", "normalised", "zca"], help="declare what the values are (default: detected)"
    )
    parser.add_argument("--mean", help="with --space normalised: the per-channel mean it used, e.g. 0.49,0.48,0.45")
    parser.add_argument("--std", help="with --space normalised: the per-channel std it used")
    parser.add_argument("--pixel-max", type=float, help="with --space pixels: the value of white, 1 or 255")
    parser.add_argument(
        "--skip-value-check", action="store_true", help="skip the check of the values' range and spread"
    )


def _declared(args: argparse.Namespace) -> Any:
    """The declaration of a foreign set's values from the command line, or None when nothing was declared."""
    from distillbench.harness import formats

    declared = formats.Declared(
        space=args.space,
        mean=formats.parse_floats(args.mean, "--mean"),
        std=formats.parse_floats(args.std, "--std"),
        pixel_max=args.pixel_max,
        check_values=not args.skip_value_check,
    )
    return declared if declared.anything or args.skip_value_check else None


# What harness.runner.default_data_root resolves (cli does not import it: --help stays free of torch).
DATA_ROOT_DEFAULT = "$DISTILLBENCH_DATA or ~/.cache/distillbench"


def _data_root_option(parser: argparse.ArgumentParser, *, prefix: str = "", default: str = "") -> None:
    """``--data-root``, declared once so every command states the same default."""
    default = default or DATA_ROOT_DEFAULT
    parser.add_argument("--data-root", help=f"{prefix}dataset root (default: {default})")


def _protocol_option(parser: argparse.ArgumentParser) -> None:
    """``--protocol`` of one trial (distill, evaluate).

    None = not given: the default (convnet-v1) then comes with a cost warning on a CPU (harness/cpu_defaults.py).
    """
    parser.add_argument(
        "--protocol", help="evaluation protocol (default convnet-v1; without a GPU a warning says how long it takes)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="distillbench",
        description="Benchmark dataset distillation methods: run grids, inspect plugins, build leaderboards.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_fmt("""
examples:
  distillbench run configs/quickstart.yaml
  distillbench ls methods
  distillbench describe dm
  distillbench distill dm digits --ipc 10 --protocol quick-v1
  distillbench leaderboard results --out results/leaderboard
"""),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def command(name: str, help_text: str, example: str) -> argparse.ArgumentParser:
        sub_parser = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=f"example:\n  {example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub_parser.add_argument(
            "--plugin",
            action="append",
            default=[],
            metavar="MODULE_OR_FILE",
            help="import a plugin module or .py file first (repeatable)",
        )
        return sub_parser

    run = command(
        "run",
        "Run a grid file under Ray Tune; skip trials that already have a row.",
        "distillbench run configs/quickstart.yaml --results results/quickstart",
    )
    run.add_argument("grid", help="YAML grid file")
    run.add_argument(
        "--results", help="results directory or URI such as s3://bucket/prefix (default: results/<grid name>)"
    )
    run.add_argument(
        "--artefacts",
        help="folder or URI for cached artefacts shared by grids: expert buffers, teachers (default: grid "
        "artefacts, else the results directory)",
    )
    _data_root_option(run, default=f"the grid's data_root, else {DATA_ROOT_DEFAULT}")
    run.add_argument(
        "--address", help="join a running Ray cluster ('auto' or host:port; default: $RAY_ADDRESS or local)"
    )
    run.add_argument(
        "--logger",
        action="append",
        default=[],
        metavar="NAME",
        help="also log every trial to this tracker: tensorboard, mlflow or wandb (repeatable; adds to the grid's "
        "loggers:)",
    )
    run.add_argument("--dry-run", action="store_true", help="validate and list the trials; run and write nothing")
    run.add_argument("--no-leaderboard", action="store_true", help="do not rebuild the leaderboard at the end")

    ls = command(
        "ls",
        "List registered plugins of a kind, optionally filtered by a wildcard pattern.",
        "distillbench ls methods 'd*'",
    )
    ls.add_argument("kind", help="methods, datasets, networks, protocols, weightings or labels")
    ls.add_argument("pattern", nargs="?", help="fnmatch pattern, e.g. 'd*'")
    ls.add_argument("--check", action="store_true", help="import every plugin and report the ones that fail")

    describe = command("describe", "Show a plugin's documentation and parameters.", "distillbench describe dm")
    describe.add_argument("name", help="plugin name (looked up in every registry) or KIND:NAME")

    distill = command(
        "distill",
        "Distil and evaluate one trial without Ray.",
        "distillbench distill dm[iterations=100] digits --ipc 10 --protocol quick-v1 --json",
    )
    distill.add_argument("method", help="method spec, e.g. dm or 'dm[iterations=100]'")
    distill.add_argument("dataset", help="dataset spec, e.g. digits")
    distill.add_argument("--ipc", type=int, required=True, help="samples per class")
    distill.add_argument("--seed", type=int, default=0, help="distillation seed (default 0)")
    _protocol_option(distill)
    distill.add_argument("--weighting", default="none", help="sample weighting (default none)")
    distill.add_argument("--labels", default="native", help="label stage (default native)")
    _data_root_option(distill)
    distill.add_argument("--out", help="save the distilled set here (.safetensors, with .json metadata beside it)")
    distill.add_argument("--json", action="store_true", help="print the result row as one JSON object on stdout")

    evaluate = command(
        "evaluate",
        "Evaluate a saved distilled set under a protocol.",
        "distillbench evaluate results/quickstart/sets/0123abcd.safetensors --protocol quick-v1",
    )
    evaluate.add_argument(
        "set_file", help="a .safetensors file written by distill --out or by a run, or another format's set (--format)"
    )
    _format_arguments(evaluate, default="distillbench")
    _protocol_option(evaluate)
    evaluate.add_argument("--seed", type=int, help="evaluation seed (default: the set's distillation seed)")
    _data_root_option(evaluate)
    evaluate.add_argument("--json", action="store_true", help="print the metrics as one JSON object on stdout")

    board = command(
        "leaderboard",
        "Build the leaderboard (Markdown, self-contained HTML and CSV) from results directories.",
        "distillbench leaderboard results/quickstart --out results/quickstart/leaderboard",
    )
    board.add_argument("results", nargs="+", help="one or more results directories or URIs (s3://bucket/prefix)")
    board.add_argument(
        "--out", help="output directory (default: <first results dir>/leaderboard; ./leaderboard for a URI)"
    )
    board.add_argument("--grid", help="only rows of this grid (wildcards allowed)")
    board.add_argument("--dataset", help="only rows of this dataset (wildcards allowed)")
    board.add_argument("--protocol", help="only rows of this protocol (wildcards allowed)")
    board.add_argument("--reported", help="YAML of published numbers (default: the packaged reported.yaml)")
    board.add_argument("--open", action="store_true", help="open index.html in the web browser when done")

    data = command(
        "data",
        "Manage dataset files: 'fetch' downloads a dataset into the data root and verifies its checksums.",
        "distillbench data fetch cifar10 --data-root ~/.cache/distillbench",
    )
    data.add_argument("action", choices=["fetch"], help="fetch: download (if missing) and verify")
    data.add_argument("dataset", help="dataset name, e.g. mnist or cifar10")
    _data_root_option(data)
    status = command(
        "status",
        "Show done / pending / failed trials per grid of a results directory, with an error summary.",
        "distillbench status results/quickstart --grid configs/quickstart.yaml",
    )
    status.add_argument("results", help="a results directory or URI (s3://bucket/prefix)")
    status.add_argument("--grid", action="append", default=[], help="grid file(s): also count their pending trials")
    compact = command(
        "compact",
        "Merge the small row files of a results directory into one compacted Parquet file (reads get faster).",
        "distillbench compact results/quickstart",
    )
    compact.add_argument(
        "results", nargs="?", default=".", help="a results directory or URI (s3://bucket/prefix); default: here"
    )
    show = command(
        "show",
        "Print the sentences of a text set: token ids as words, embedding-space sentences as nearest words.",
        "distillbench show results/text/sets/0123abcd.safetensors --data-root ../shared/data",
    )
    show.add_argument("set_file", help="a .safetensors file of a text dataset, written by distill --out or by a run")
    _data_root_option(show)
    buffers = command(
        "buffers",
        "List cached expert trajectories (trajectory matching), or build one ahead of a grid.",
        "distillbench buffers build --dataset cifar10 --method mtt --results results/mtt --device cuda",
    )
    buffers.add_argument("action", nargs="?", choices=["list", "build"], default="list", help="list (default) or build")
    buffers.add_argument(
        "--results",
        help="results directory or URI whose buffers/ folder is used (default: $DISTILLBENCH_CACHE/buffers or "
        "~/.cache/distillbench/buffers, where trials without a results directory keep theirs)",
    )
    buffers.add_argument("--dataset", help="build: dataset spec, e.g. cifar10 or 'cifar10[zca=true]'")
    buffers.add_argument("--method", help="build: a trajectory-matching method spec, e.g. mtt or 'ftd[num_experts=20]'")
    _data_root_option(buffers, prefix="build: ")
    buffers.add_argument("--device", help="build: where experts train (default: the first CUDA device, else cpu)")
    imported = command(
        "import",
        "Convert a set released in another repository's format into a distillbench set, checked against its dataset.",
        "distillbench import res_DM_CIFAR10_ConvNet_10ipc.pt --format dc-res --dataset cifar10 --out dm10.safetensors",
    )
    imported.add_argument("set_file", metavar="PATH", help="the artefact: a file or folder (docs/formats.md)")
    _format_arguments(imported, default="auto")
    imported.add_argument("--out", required=True, help="the distillbench set to write (.safetensors + .json)")
    _data_root_option(imported)
    export = command(
        "export",
        "Write a set as a Hugging Face dataset folder: Parquet data, the set itself, and a dataset card.",
        "distillbench export results/quickstart/sets/0123abcd.safetensors --out dm-digits-ipc10",
    )
    export.add_argument("set_file", help="a .safetensors set (written by distill --out, a run or import)")
    export.add_argument("--out", required=True, help="the folder to write (new or empty)")
    export.add_argument("--results", help="results directory whose rows of the set go into the card (default: its own)")
    _data_root_option(export, prefix="for statistics computed from the data, e.g. digits: ")
    push = command(
        "push",
        "Upload a set (or a folder written by export) to the Hugging Face Hub as a dataset repository.",
        "distillbench push dm10.safetensors my-name/dm-digits-ipc10 --private",
    )
    push.add_argument("set_file", help="a .safetensors set, or a folder written by export")
    push.add_argument("repo_id", help="the dataset repository, owner/name")
    push.add_argument("--private", action="store_true", help="create the repository private (if it is new)")
    push.add_argument("--token", help="hub token (default: $HF_TOKEN or the saved 'hf auth login')")
    push.add_argument("--results", help="results directory whose rows of this set go into the card")
    _data_root_option(push)
    return parser


# ------------------------------------------------------------------------------------------ commands
def _dry_run(plan: Any, done: set[str], results: Any = None) -> None:
    """List a grid's trials as they are resolved, then count them; keeps no trial, only counts.

    The first line and the first trials appear at once (flushed), so a large grid shows its shape in a
    second; the counts come last because they are known only when every trial has been resolved. An
    invalid trial raises after the trials before it were listed; nothing is written either way. Tuned
    blocks list their searches (how much of each budget ``results`` already holds) and final trials.
    """
    from distillbench.harness.spec import trial_table

    print(f"grid {plan.name!r}: {plan.combinations} combinations; listing each trial as it validates", flush=True)
    total = finished = 0
    flushed = time.monotonic()
    for trial in plan.trials():
        row = trial_table([trial])[0]
        total += 1
        state = "done" if row["trial_id"] in done else "pending"
        finished += state == "done"
        print(
            f"  {row['trial_id']}  {state:7}  {row['dataset']}  {row['method']}  ipc={row['ipc']}  "
            f"seed={row['seed']}  weighting={row['weighting']}  labels={row['labels']}  {row['protocol']}"
        )
        # Through a pipe stdout is block-buffered: flush the first line and then a few times a second.
        if total == 1 or time.monotonic() - flushed > 0.25:
            sys.stdout.flush()
            flushed = time.monotonic()
    searches = plan.searches() if plan.tunes else []
    if searches:
        _print_searches(searches, results)
        finals = sum(len(s.final_seeds) for s in searches)
        print(
            f"grid {plan.name!r}: {total} trials, {total - finished} to run, {finished} done; {len(searches)} searches "
            f"and up to {finals} final trials"
        )
        return
    print(f"grid {plan.name!r}: {total} trials, {total - finished} to run, {finished} done")


def _print_searches(searches: list[Any], results: Any) -> None:
    """The searches of tuned blocks: budget, what the rows already hold, and the final trials that follow.

    Shared by ``run --dry-run`` and ``status --grid``; ``results`` None lists every search as pending.
    """
    from distillbench.harness import tuning

    states = tuning.read_states(results, searches) if results is not None else {}
    for budget in dict.fromkeys(s.budget for s in searches):
        amount = f"{budget.trials} search trials" if budget.trials is not None else f"{budget.text} of search trials"
        print(f"tuned: up to {amount} per (dataset, method, ipc, weighting, labels), then final trials")
    for search in searches:
        state = states.get(search.tuning_id)
        spent = f"{state.spent:g}" if state is not None else "0"
        status = "done" if state is not None and state.finished else "pending"
        seeds = ", ".join(str(s) for s in search.final_seeds)
        base = search.base
        print(
            f"  search {search.tuning_id}  {status:7}  {base.dataset}  {base.method}  ipc={base.ipc}  "
            f"weighting={base.weighting}  labels={base.labels}  {base.protocol}: {spent} of {search.budget.text} "
            f"spent, {search.settings.search} search on tuning seed {search.tuning_seed}"
        )
        print(f"    then {len(search.final_seeds)} final trials with the chosen configuration (seeds {seeds})")


def cmd_run(args: argparse.Namespace) -> int:
    from distillbench.harness import store, workflow
    from distillbench.harness.progress import check_logger_packages, check_loggers
    from distillbench.harness.spec import open_grid_file

    plan = open_grid_file(args.grid)  # settings checked and trials counted (the cap), none resolved yet
    loggers = check_loggers([*plan.loggers, *args.logger], "--logger" if args.logger else "loggers")
    # A real run resolves and validates every trial before anything else, so nothing is scheduled from a
    # grid with a bad trial anywhere; --dry-run resolves them while it lists them.
    grid = None if args.dry_run else plan.grid()
    settings = workflow.run_settings(
        plan,
        base=Path(args.grid).resolve().parent,
        results=args.results,
        artefacts=args.artefacts,
        data_root_arg=args.data_root,
    )
    results, artefacts = settings.results, settings.artefacts
    # A logger whose package is missing (or MLflow without a place to write) stops here, before any work.
    local = store.location(results)
    check_logger_packages(loggers, results_dir=local.path if local.local else None, environ=os.environ)

    def skip(path: Any, reason: str) -> None:
        # Reported and skipped, as status and leaderboard do: its trial runs again and overwrites the file.
        print(f"skipped {str(path).rsplit('/', 1)[-1]}: {reason} (its trial runs again)", file=sys.stderr)

    done = store.existing_trial_ids(results, status=("ok", "diverged"), on_bad=skip)
    if grid is None:
        _dry_run(plan, done, results)
        shared = f"; cached artefacts (expert buffers, teachers) in {store.location(artefacts)}" if artefacts else ""
        print(f"results would go to {store.location(results)}{shared}; nothing was run or written (--dry-run)")
        return 0
    pending = [t for t in grid.trials if t.trial_id not in done]
    print(
        f"grid {grid.name!r}: {len(grid.trials)} trials ({len(pending)} to run, {len(grid.trials) - len(pending)} "
        f"already done) -> {store.location(results)}",
        flush=True,
    )
    if grid.searches:
        print(f"tuned blocks: {len(grid.searches)} searches first, then their final trials with the grid", flush=True)
    outcome = workflow.schedule(grid, settings, address=args.address, plugins=args.plugin, loggers=args.logger)
    print(
        f"finished in {outcome.seconds:.1f} s: {outcome.ok} ok, {outcome.failed} failed, "
        f"{outcome.skipped} skipped (already done), {outcome.pending} not run"
    )
    for error in outcome.errors[:10]:
        print(f"  failed: {error}")
    for note in outcome.notes:
        print(note)
    if outcome.stopped:  # disk full or read-only: one line, finished rows kept, no leaderboard to write
        print(f"error: {outcome.stopped}", file=sys.stderr)
        return EXIT_USAGE
    print(f"rows: {store.location(results) / 'rows'}")
    if not args.no_leaderboard:
        board = workflow.build_board([results], workflow.board_dir(results, grid.name))
        print(f"leaderboard: {board.markdown_path}")
        print(f"             {board.csv_path}")
        print(f"             {board.html_path}")
    if outcome.interrupted:
        print("interrupted: run the same command again to finish the missing trials", file=sys.stderr)
        return 130
    return 0 if outcome.failed == 0 else 1


def cmd_ls(args: argparse.Namespace) -> int:
    from distillbench.harness.plugins import registry

    reg = registry(args.kind)
    if args.check:
        reg.load_all()
    names = reg.names(args.pattern)
    for name in names:
        print(name)
    for name, reason in sorted(reg.broken.items()):
        print(f"{name}  [broken: {reason}]", file=sys.stderr)
    if not names and args.pattern:
        print(f"no {reg.kind} matches {args.pattern!r}", file=sys.stderr)
    return 0


def cmd_describe(args: argparse.Namespace) -> int:
    import inspect

    from distillbench.harness.errors import UnknownNameError
    from distillbench.harness.params import describe_params
    from distillbench.harness.plugins import REGISTRIES, registry

    kind, _, name = args.name.rpartition(":")
    candidates = [registry(kind)] if kind else list(REGISTRIES.values())
    found = [(reg, reg.get(name)) for reg in candidates if name in reg]
    if not found:
        every = sorted({n for reg in candidates for n in reg.names()})
        import difflib

        close = difflib.get_close_matches(name, every, n=3, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UnknownNameError(f"no plugin named {name!r}.{hint} See 'distillbench ls KIND' for the names")
    for reg, obj in found:
        print(f"{reg.kind} {name}  ({reg.origin(name)})")
        doc = inspect.getdoc(obj) if not hasattr(obj, "description") else obj.description
        if doc:
            print("  " + doc.replace("\n", "\n  "))
        if hasattr(obj, "modalities"):
            print(f"  modalities: {', '.join(sorted(obj.modalities))}")
        if hasattr(obj, "accepts_weights"):
            print(f"  accepts sample weights: {'yes' if obj.accepts_weights else 'no'}")
        if hasattr(obj, "version") and hasattr(obj, "n_models"):
            import dataclasses

            for field in dataclasses.fields(obj):
                if field.name != "description":
                    print(f"  {field.name} = {getattr(obj, field.name)!r}")
            continue
        params = getattr(obj, "Params", None)
        rows = describe_params(params) if params is not None else []
        if rows:
            print("  parameters:")
            for pname, ptype, default, help_text in rows:
                print(f"    {pname}: {ptype} = {default}" + (f"  # {help_text}" if help_text else ""))
        else:
            print("  parameters: none")
    return 0


def _warn(message: str | None) -> None:
    """One warning line on stderr (stdout stays the result, e.g. for --json)."""
    if message:
        print(message, file=sys.stderr, flush=True)


def _summary(row: dict[str, Any]) -> str:
    if row["status"] != "ok":
        return f"{row['status']}: {str(row.get('error') or '').strip().splitlines()[0]}"
    return (
        f"{row['method']} on {row['dataset']}, ipc {row['ipc']}, seed {row['seed']}, {row['protocol']}: "
        f"accuracy {100 * row['acc_mean']:.2f} ± {100 * row['acc_std']:.2f} % over {row['n_eval_models']} models "
        f"(distill {row['distill_seconds']:.1f} s, eval {row['eval_seconds']:.1f} s)"
    )


def cmd_distill(args: argparse.Namespace) -> int:
    from distillbench.harness import cpu_defaults, store, workflow
    from distillbench.harness.spec import TrialSpec

    spec = TrialSpec(
        dataset=args.dataset,
        method=args.method,
        ipc=args.ipc,
        seed=args.seed,
        weighting=args.weighting,
        labels=args.labels,
        protocol=args.protocol or cpu_defaults.DEFAULT_PROTOCOL,
        grid="cli",
    )
    _warn(cpu_defaults.distill_warning(spec, protocol_given=args.protocol is not None))

    # Bad input (names, parameters, --out, missing data) fails before any work, with exit status 2.
    with _terminal_progress() as progress:
        rows = workflow.distill_rows(spec, data_root_arg=args.data_root, out=args.out, progress=progress)
    for row in rows:  # one row per evaluation network of the protocol
        print(store.row_to_json(row) if args.json else _summary(row))
    ok = store.trial_status(r["status"] for r in rows) == "ok"
    if args.out is not None and ok and not args.json:
        print(f"set: {workflow.saved_set_path(args.out)}")
    return 0 if ok else 1


def cmd_evaluate(args: argparse.Namespace) -> int:
    from distillbench.harness import cpu_defaults, workflow

    _warn(cpu_defaults.evaluate_warning(args.set_file, protocol_given=args.protocol is not None))
    with _terminal_progress() as progress:
        results = workflow.evaluate_rows(
            args.set_file,
            protocol=args.protocol or cpu_defaults.DEFAULT_PROTOCOL,
            seed=args.seed,
            data_root_arg=args.data_root,
            progress=progress,
            fmt=args.format,
            dataset=args.dataset,
            declared=_declared(args),
        )
        # one result per evaluation network of the protocol, printed as each is done
        for network, result in results:
            if progress is not None:
                progress.close()  # the result line replaces the progress line
            _print_evaluation(args, network, result)
    return 0


def _print_evaluation(args: argparse.Namespace, network: str, result: dict[str, Any]) -> None:
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        print(
            f"{result['method']} on {result['dataset']}, ipc {result['ipc']}, {result['protocol']}@"
            f"{result['protocol_version']}, {network}: accuracy {100 * result['acc_mean']:.2f} ± "
            f"{100 * result['acc_std']:.2f} % over {result['n_eval_models']} models "
            f"({result['eval_seconds']:.1f} s)"
        )


@contextlib.contextmanager
def _terminal_progress() -> Iterator[Any]:
    """A redrawn progress line on stderr when it is a terminal (phase, x/y, loss, elapsed), else None.

    Nothing changes for logs and pipes; the line is cleared when the block ends, however it ends.
    """
    if not sys.stderr.isatty():
        yield None
        return
    from distillbench.harness.progress import TerminalLine

    line = TerminalLine(sys.stderr)
    try:
        yield line
    finally:
        line.close()


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from distillbench.harness import workflow

    locations = workflow.results_locations(args.results)
    first = locations[0]
    out = Path(args.out) if args.out else (Path(first.path) / "leaderboard" if first.local else Path("leaderboard"))
    board = workflow.build_board(
        locations, out, grid=args.grid, dataset=args.dataset, protocol=args.protocol, reported=args.reported
    )
    for path, reason in board.skipped_files:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    print(f"{board.n_ok} ok rows, {len(board.failures)} failed rows, {len(board.tables)} tables")
    print(f"leaderboard: {board.markdown_path}")
    print(f"             {board.csv_path}")
    print(f"             {board.html_path}")
    if args.open:
        import webbrowser

        webbrowser.open(Path(board.html_path).resolve().as_uri())
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from distillbench.datasets.base import Dataset
    from distillbench.harness import workflow
    from distillbench.harness.plugins import DATASETS

    configured = DATASETS.resolve(args.dataset)
    dataset = configured.obj(configured.params)
    root = workflow.data_root(args.data_root)
    # A dataset that keeps the base class's no-op prepare() has no files to fetch (digits is embedded).
    if type(dataset).prepare is Dataset.prepare:
        print(f"{configured.name}: nothing to download (the data ships with the package)")
        return 0
    dataset.prepare(root, download=True)
    paths = dataset.data_paths(root) if hasattr(dataset, "data_paths") else [root]
    print(f"{configured.name}: ready under {root} (missing files downloaded, official md5 sums checked)")
    for path in paths:
        print(f"  {path}")
    return 0


def cmd_compact(args: argparse.Namespace) -> int:
    from distillbench.harness import store

    results = store.location(args.results)
    if not (results / "rows").is_dir():
        raise DistillBenchError(f"{str(results)!r} has no rows/ folder; pass the --results directory of a run")

    def skip(path: Any, reason: str) -> None:
        print(f"skipped {str(path).rsplit('/', 1)[-1]}: {reason} (left in place)", file=sys.stderr)

    try:
        done = store.compact(results, on_bad=skip)
    except OSError as exc:
        raise DistillBenchError(store.write_problem_message(results / "rows", exc)) from None
    if done.compacted is None:
        print(f"{results / 'rows'}: nothing to compact")
    else:
        print(
            f"{done.merged_files} row files merged into {done.compacted} ({done.trials} trials, {done.rows} rows); "
            f"{done.removed_files} removed"
        )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from collections import Counter

    from distillbench.harness import store
    from distillbench.harness.spec import load_grid_file

    results = store.location(args.results)
    if not (results / "rows").is_dir():
        raise DistillBenchError(f"{str(results)!r} has no rows/ folder; pass the --results directory of a run")
    skipped: list[str] = []
    # Only the columns the table uses: a 100,000-row store then reads in seconds (benchmarks/store.py).
    frame = store.read_rows(
        [results],
        columns=["trial_id", "grid", "status", "error"],
        on_bad=lambda path, reason: skipped.append(f"{str(path).rsplit('/', 1)[-1]}: {reason}"),
    )
    by_trial: dict[str, list[dict[str, Any]]] = {}
    for row in frame.to_dict("records"):  # one row per evaluation network
        by_trial.setdefault(row["trial_id"], []).append(row)
    trials: dict[str, dict[str, Any]] = {}
    for trial_id, rows in by_trial.items():
        status = store.trial_status(r["status"] for r in rows)
        # Shown: the first row with the trial's status, whose error decided it.
        shown = next((r for r in rows if r["status"] == status), rows[0])
        trials[trial_id] = {**shown, "status": status}
    grids = [load_grid_file(path) for path in args.grid]
    for t in trials.values():
        if t.get("grid") is None:  # a row whose writer kept no grid column
            t["grid"] = "(no grid)"
    names = sorted({str(t["grid"]) for t in trials.values()} | {g.name for g in grids})
    print(f"{'grid':24} {'done':>6} {'diverged':>9} {'failed':>7} {'pending':>8}")
    for name in names:
        counts = Counter(t["status"] for t in trials.values() if str(t["grid"]) == name)
        pending = "?"
        for grid in grids:
            if grid.name == name:
                finished = {i for i, t in trials.items() if t["status"] in ("ok", "diverged")}
                pending = str(sum(1 for t in grid.trials if t.trial_id not in finished))
        print(f"{name:24} {counts['ok']:>6} {counts['diverged']:>9} {counts['error']:>7} {pending:>8}")
    # A search's final trials exist only once it has chosen a configuration (their ids carry it), so the
    # pending column cannot count them before then; counting those of finished searches only would mix
    # known and unknown. Pending stays the untuned trials, said so, and the searches are listed after it.
    for grid in grids:
        if grid.searches:
            finals = sum(len(s.final_seeds) for s in grid.searches)
            print(
                f"\ngrid {grid.name!r}: pending counts its untuned trials only; {len(grid.searches)} searches "
                f"and up to {finals} final trials follow"
            )
            _print_searches(list(grid.searches), results)
    errors = Counter(
        str(t.get("error") or "").strip().splitlines()[0] if t.get("error") else t["status"]
        for t in trials.values()
        if t["status"] not in ("ok", "stopped")  # stopped: a search trial ASHA ended early, not a failure
    )
    if errors:
        print("\nerrors (most frequent first):")
        for message, count in errors.most_common(10):
            print(f"  {count:>4} x {message[:200]}")
    for line in skipped:
        print(f"skipped {line}", file=sys.stderr)
    if not args.grid:
        print("\n(pending trials are counted when the grid file is given with --grid)")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from distillbench.datasets._text import sentence_words
    from distillbench.harness import store, workflow
    from distillbench.harness.runner import load_data

    dset, meta = store.load_set(args.set_file)
    resolved = workflow.set_spec(args.set_file, meta)
    if resolved.info.modality != "text":
        raise DistillBenchError(f"{args.set_file}: dataset {resolved.dataset.display!r} is not text; show needs text")
    info = load_data(resolved, workflow.data_root(args.data_root)).info
    space = "token ids" if dset.x.dim() == 2 else "embedding space: nearest word by cosine at each position"
    print(f"{len(dset)} sentences of {resolved.dataset.display} by {resolved.method.display} ({space})")
    for i, words in enumerate(sentence_words(dset.x, info)):
        label = dset.y[i]
        name = "[" + ", ".join(f"{v:.2f}" for v in label.tolist()) + "]" if dset.soft else info.class_names[int(label)]
        print(f"{i:4d} {name}: {' '.join(words)}")
    return 0


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def cmd_buffers(args: argparse.Namespace) -> int:
    from distillbench.methods import _experts

    if args.action == "build":
        return _build_buffer(args)
    for flag in ("dataset", "method", "data_root", "device"):
        if getattr(args, flag) is not None:
            raise DistillBenchError(f"--{flag.replace('_', '-')} applies to 'buffers build' only")
    if args.results:
        from distillbench.harness import store

        store.check_results_dir(args.results)  # an existing file is refused, not listed as "no buffers"
    where = _experts.buffers_location(args.results)
    entries = _experts.list_buffers(args.results)
    if not entries:
        print(f"no expert buffers under {where}")
        return 0
    print(f"expert buffers under {where}")
    print(f"{'id':16}  {'dataset':24} {'net':24} {'experts x epochs':>16} {'opt':4} {'MB':>9} {'age':>5}  status")
    for e in entries:
        shape = f"{e['num_experts'] or '?'} x {e['epochs'] or '?'}"
        status = "built" if e["status"] == "built" else f"partial ({e['experts_written']}/{e['num_experts'] or '?'})"
        if e["claimed_by"]:
            status += f", building on {e['claimed_by']}"
        print(
            f"{e['id']:16}  {str(e['dataset'] or '?'):24} {str(e['net'] or '?'):24} {shape:>16} "
            f"{e['optimizer'] or '?':4} {e['size_bytes'] / 1e6:9.1f} {_age(e['age_s']):>5}  {status}"
        )
    return 0


def _build_buffer(args: argparse.Namespace) -> int:
    import torch

    from distillbench.harness import store, workflow
    from distillbench.harness.plugins import DATASETS, METHODS
    from distillbench.harness.runner import pick_device
    from distillbench.methods import _experts

    if not args.dataset or not args.method:
        raise DistillBenchError("'buffers build' needs --dataset and --method, e.g. --dataset cifar10 --method mtt")
    method_cfg = METHODS.resolve(args.method)
    dataset_cfg = DATASETS.resolve(args.dataset)
    method = method_cfg.obj(method_cfg.params)
    if not callable(getattr(method, "expert_recipe", None)):
        raise DistillBenchError(
            f"method {method_cfg.display!r} trains on no expert trajectories (it has no expert_recipe); buffers are "
            "built for trajectory-matching methods such as mtt, ftd and datm"
        )
    try:
        device = pick_device(args.device)
    except RuntimeError:
        raise DistillBenchError(f"--device {args.device!r} is not a torch device; use cpu, cuda or cuda:1") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DistillBenchError(f"--device {args.device!r}: CUDA is not available here; use --device cpu")
    results = store.check_results_dir(args.results) if args.results else None
    dataset = dataset_cfg.obj(dataset_cfg.params)
    root = workflow.data_root(args.data_root)
    dataset.prepare(root, download=False)
    data = dataset.load(root)
    recipe = method.expert_recipe(data.info)
    tty = sys.stderr.isatty()

    def progress(fraction: float, message: str) -> None:
        print(f"\r\033[K{100 * fraction:5.1f}% {message}", end="", file=sys.stderr, flush=True)

    buffer = _experts.get_buffer(data, recipe, results=results, device=device, progress=progress if tty else None)
    if tty:
        print("\r\033[K", end="", file=sys.stderr)
    state = f"built in {buffer.build_seconds:.1f} s" if buffer.build_seconds > 0 else "already built"
    print(
        f"buffer {buffer.id} ({data.info.name}, {recipe.net}, {buffer.num_experts} experts x {buffer.epochs} epochs, "
        f"{recipe.optimizer}): {state}; {buffer.location}"
    )
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from distillbench.harness import store, workflow
    from distillbench.harness.formats import import_set

    out = workflow.saved_set_path(args.out)
    if out.exists() and out.is_dir():
        raise DistillBenchError(f"--out {args.out!r} is a directory; pass a file name such as set.safetensors")
    workflow.check_path_writable(out.parent, "--out")
    dset, meta = import_set(
        args.set_file,
        args.format,
        dataset=args.dataset,
        declared=_declared(args),
        data_root=workflow.data_root(args.data_root),
    )
    block = meta.get("imported")
    if block is None:
        raise DistillBenchError(f"{args.set_file} is already a distillbench set; copy its .safetensors and .json")
    store.save_set(out.parent, out.stem, dset, meta)
    labels = "soft labels" if dset.soft else "hard labels"
    print(
        f"imported {len(dset)} images ({meta['ipc']} per class, {labels}) of {meta['method']} for {meta['dataset']}: "
        f"{block['space']['description']} ({block['space']['how']}); conversion: {block['conversion']}"
    )
    print(f"source sha256 {block['sha256']}")
    print(f"set: {out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from distillbench.harness import workflow
    from distillbench.harness.hub import export_set

    done = export_set(args.set_file, args.out, results=args.results, data_root=workflow.data_root(args.data_root))
    for note in done.notes:
        print(f"note: {note}", file=sys.stderr)
    rows = f"{len(done.results)} result rows" if done.results else "no result rows"
    print(f"exported to {done.folder} ({rows} in the card; load with datasets.load_dataset({str(done.folder)!r}))")
    for name, digest in done.checksums.items():
        print(f"  {name}  sha256 {digest}")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from distillbench.harness import workflow
    from distillbench.harness.hub import push

    repo_url, commit_url = push(
        args.set_file,
        args.repo_id,
        private=args.private,
        token=args.token,
        results=args.results,
        data_root=workflow.data_root(args.data_root),
    )
    print(f"pushed to {repo_url} ({commit_url})")
    return 0


COMMANDS = {
    "run": cmd_run,
    "ls": cmd_ls,
    "describe": cmd_describe,
    "distill": cmd_distill,
    "evaluate": cmd_evaluate,
    "leaderboard": cmd_leaderboard,
    "data": cmd_data,
    "status": cmd_status,
    "compact": cmd_compact,
    "show": cmd_show,
    "buffers": cmd_buffers,
    "import": cmd_import,
    "export": cmd_export,
    "push": cmd_push,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``distillbench`` console script."""
    args = build_parser().parse_args(argv)
    try:
        if args.plugin:
            from distillbench.harness.plugins import load_plugin_modules

            load_plugin_modules(args.plugin, base=os.getcwd())
        return COMMANDS[args.command](args)
    except DistillBenchError as exc:
        message = " ".join(str(exc).split()) if "\n" not in str(exc).strip() else str(exc).strip().splitlines()[0]
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())

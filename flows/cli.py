"""`reprolab`: one command for every pipeline (the `[project.scripts]` entry point).

    reprolab run <pipeline> [<stage>] [--set key=value ...] [--profile FILE]
    reprolab status
    reprolab demo
    reprolab report [...]
    reprolab champion|promote|rollback <pipeline> ...
    reprolab reproduce models:/<name>/<version>|models:/<name>@<alias> [--keep]

`run` is `python -m flows.<pipeline> <stage>|pipeline` (flows.common.main; without a stage, the
whole pipeline); `demo` is `python -m flows.demo`; `report` is `flows.report.main`; `reproduce` is
`flows.reproduce.main`. The help
reads the pipeline declarations only: Prefect, DVC and MLflow are imported when a command runs.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any

from tasks.pipeline import PIPELINES, declaration, declarations, describe

COMMANDS = {
    "run": "run one stage of a pipeline as a Prefect flow, or the whole pipeline (the default) "
           "through DVC, which reruns only what is stale",
    "status": "per pipeline: stale and never-run stages (DVC), the champion and its headline "
              "metric (MLflow registry), the last nightly run's verdict",
    "demo": "every pipeline end to end on generated data (offline), then a table of results",
    "report": "build the results site (reports/site/index.html) from what the pipelines wrote",
    "champion": "a pipeline's champion history: which model version held the alias, from when "
                "to when, and why",
    "promote": "give a model version the champion alias by hand (recorded like a night's "
               "verdict, with your reason)",
    "rollback": "give the champion alias back to the version that held it before",
    "reproduce": "rebuild a registered model from its recorded commit, lock and data in a "
                 "temporary worktree; say whether its metrics and predictions are "
                 "byte-identical (exit 0), or how far they are (1)",
}


def overview() -> str:
    """The pipelines, their stages and models: the epilog of `reprolab --help`."""
    lines = ["pipelines (`reprolab run <pipeline> --help`: what each stage does and reads):"]
    for pipeline in declarations():
        steps = " -> ".join(stage.step for stage in pipeline.stages)
        lines.append(f"  {pipeline.name:<9} {steps}")
        lines.append(f"  {'':<9} model {pipeline.model_name}, headline {pipeline.headline}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    top = argparse.ArgumentParser(
        prog="reprolab", formatter_class=raw, epilog=overview(),
        description="ReproLab: Prefect flows over a DVC pipeline, tracked in MLflow.")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser(
        "run", help=COMMANDS["run"], formatter_class=raw,
        usage="reprolab run <pipeline> [<stage>|pipeline] [--set KEY=VALUE ...] [--profile FILE]",
        description=f"{COMMANDS['run']}. With --set in a DVC repo the run is a DVC experiment "
                    "(dvc exp run -S). Same as `python -m flows.<pipeline> <stage>|pipeline`.",
        epilog="\n\n".join(describe(pipeline) for pipeline in declarations()))
    run.add_argument("pipeline", choices=list(PIPELINES))
    run.add_argument("args", nargs=argparse.REMAINDER,
                     help="[<stage>] [--set KEY=VALUE ...] [--profile FILE]")
    sub.add_parser("status", help=COMMANDS["status"], description=COMMANDS["status"])
    for name in ("demo", "report"):  # their own --help answers, from their module
        sub.add_parser(name, help=COMMANDS[name], add_help=False)
    champion_commands(sub)
    again = sub.add_parser("reproduce", help=COMMANDS["reproduce"],
                           description=COMMANDS["reproduce"],
                           usage="reprolab reproduce <model_uri> [--keep]")
    again.add_argument("model_uri", help="models:/<name>/<version> or models:/<name>@<alias>, "
                                         "e.g. models:/crypto-next-move@champion")
    again.add_argument("--keep", action="store_true",
                       help="keep the worktree (its data, outputs, dvc.lock, MLflow store)")
    return top


def champion_commands(sub: Any) -> None:
    history = sub.add_parser("champion", help=COMMANDS["champion"],
                             description=COMMANDS["champion"])
    history.add_argument("pipeline", choices=list(PIPELINES))
    promote = sub.add_parser("promote", help=COMMANDS["promote"], description=COMMANDS["promote"],
                             usage="reprolab promote <pipeline> <version> --reason TEXT")
    promote.add_argument("pipeline", choices=list(PIPELINES))
    promote.add_argument("version", help="the registered model version, e.g. 3")
    promote.add_argument("--reason", required=True, help="why: kept on the record")
    rollback = sub.add_parser("rollback", help=COMMANDS["rollback"],
                              description=COMMANDS["rollback"])
    rollback.add_argument("pipeline", choices=list(PIPELINES))
    rollback.add_argument("--reason", default="rolled back by hand", help="why: kept on the record")


def champion_command(args: argparse.Namespace) -> int:
    from flows.champions import history_text, move
    from tasks.errors import ReproLabError

    try:
        if args.command == "champion":
            print(history_text(args.pipeline))
            return 0
        verdict = move(args.pipeline, getattr(args, "version", None), args.reason)
    except ReproLabError as exc:
        print(f"error: {args.command} {args.pipeline}: {exc}", file=sys.stderr)
        return 2
    print(f"{verdict.model}: champion v{verdict.champion or '-'} -> v{verdict.challenger} "
          f"({verdict.reason})")
    return 0


def reproduce(args: argparse.Namespace) -> int:
    from flows.reproduce import main  # imported only when asked for

    return main([args.model_uri, *(["--keep"] if args.keep else [])],
                prog="reprolab reproduce")


def run(pipeline: str, argv: list[str]) -> int:
    """`python -m flows.<pipeline>`'s CLI, with the whole pipeline as the default stage."""
    from flows.common import main

    module = importlib.import_module(f"flows.{pipeline}")
    code = main(declaration(pipeline), module.FLOWS, module.pipeline, argv,
                prog=f"reprolab run {pipeline}", default_stage="pipeline")
    if code == 0:  # the site shows what just ran (when every pipeline it reads has results)
        from flows.report import refresh_site

        refresh_site()
    return code


def status() -> int:
    from flows.status import report

    print(report())
    return 0


def demo(argv: list[str]) -> int:
    from flows.demo import main

    return main(argv, prog="reprolab demo")


def report(argv: list[str]) -> int:
    from flows.report import main  # imported only when asked for

    return main(argv, prog="reprolab report")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "run":
        return run(args.pipeline, [*args.args, *rest])
    if args.command in ("demo", "report"):
        return demo(rest) if args.command == "demo" else report(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command in ("champion", "promote", "rollback"):
        return champion_command(args)
    if args.command == "reproduce":
        return reproduce(args)
    return status()


if __name__ == "__main__":
    sys.exit(main())

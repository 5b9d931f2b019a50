"""The results site as a Prefect flow and a DVC stage.

    python -m flows.report          in a DVC repo: `dvc repro -s report` (dvc.lock records
                                    what the site was built from); elsewhere: build it here
    python -m flows.report build    build reports/site now (the DVC stage's command)

The site (tasks/site.py) shows what the pipelines wrote: it never reruns a pipeline. To
rebuild stale results first, `dvc repro` (everything) or `reprolab run <pipeline>`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from flows.common import dvc_repro, in_dvc_repo, run_stage, run_tags
from flows.outputs import fail_as_stage
from tasks.errors import ReproLabError
from tasks.logs import get_logger
from tasks.site import SITE, STAGE


def report_flow() -> dict[str, Any]:
    from prefect import flow

    @flow(name=STAGE.name, description=STAGE.doc)
    def report() -> dict[str, Any]:
        return run_stage(STAGE)

    return report()


def refresh_site() -> list[str]:
    """After work DVC does not run (a night, an ablation): rerun the report stage alone, when
    everything it reads exists; otherwise say what it waits for (nothing is half-built)."""
    missing = [dep for dep in STAGE.deps if not Path(dep).exists()]
    if not in_dvc_repo() or missing:
        get_logger().info("report site not refreshed: %s", "not a DVC repo" if not missing
                          else f"{', '.join(missing)} not built yet")
        return []
    return dvc_repro([STAGE.name], single_item=True)


def main(argv: list[str] | None = None, prog: str = "python -m flows.report") -> int:
    parser = argparse.ArgumentParser(
        prog=prog, description=STAGE.doc,
        epilog="The pages read reports/ and plots/ only; open "
               f"{SITE / 'index.html'} in any browser (no network needed).")
    parser.add_argument("action", nargs="?", choices=["build"],
                        help="build the site here and now (what the DVC stage runs); "
                             "without it a DVC repo runs the `report` stage through DVC")
    args = parser.parse_args(argv)
    from prefect import tags

    building = args.action == "build" or not in_dvc_repo()
    try:
        with tags(*run_tags()):
            if building:
                report_flow()
            else:
                dvc_repro([STAGE.name], single_item=True)
    except ReproLabError as exc:
        fail_as_stage(STAGE.name, str(exc))  # the site keeps its last good version
        print(f"error: report: {exc}", file=sys.stderr)
        return 2
    except BaseException as exc:
        fail_as_stage(STAGE.name, f"{type(exc).__name__}: {exc}")
        raise
    print(f"report site: {SITE / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

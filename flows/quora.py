"""The quora pipeline as Prefect flows: one per stage (named like its DVC stage) and the whole.

    python -m flows.quora <stage>|pipeline [--set key=value ...]    (--help lists the stages)

The stages, their params and files are declared once in tasks/quora/pipeline.py.
"""
from __future__ import annotations

import sys

from flows.common import main, pipeline_flow, stage_flows
from tasks.quora.pipeline import PIPELINE

FLOWS = stage_flows(PIPELINE)
pipeline = pipeline_flow(PIPELINE, FLOWS)

if __name__ == "__main__":
    sys.exit(main(PIPELINE, FLOWS, pipeline))

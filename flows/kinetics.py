"""The kinetics pipeline as Prefect flows: one per stage (named like its DVC stage) and the whole.

    python -m flows.kinetics <stage>|pipeline [--set key=value ...]    (--help lists the stages)

The stages, their params and files are declared once in tasks/video/pipeline.py.
`train` also runs under torchrun (DistributedDataParallel):
    torchrun --nproc-per-node 4 -m flows.kinetics train
"""
from __future__ import annotations

import sys

from flows.common import main, pipeline_flow, stage_flows
from tasks.video.pipeline import PIPELINE

FLOWS = stage_flows(PIPELINE)
pipeline = pipeline_flow(PIPELINE, FLOWS)

if __name__ == "__main__":
    sys.exit(main(PIPELINE, FLOWS, pipeline))

"""The Kinetics action-recognition pipeline, declared once (see tasks/pipeline.py)."""
from tasks.pipeline import LOSSES, MODEL_LOADER, Curve, Out, Pipeline, Reference, Stage
from tasks.video.paths import KineticsPaths

P = KineticsPaths()
GPU = "gpu"  # in a team's clone the training stages run on the `gpu` work pool (flows/pools.py)
NOTE = "research note: Kinetics-400 val (400 classes), ResNet-50 from ImageNet"
DATA = (str(P.split), str(P.manifest), str(P.frames))
# what clips look like to a model (the split's train_dev_fraction is kinetics_split's alone)
VIEWS = tuple(f"kinetics.dataset.{k}" for k in ("frames", "sampling", "crop", "flip",
                                                "test_clips", "test_crops"))
# how the served model (tasks.video.serving) extracts a clip's frames, as kinetics_frames does
SERVED_FRAMES = tuple(f"kinetics.frames.{k}" for k in ("fps", "short_side", "jpeg_quality"))
MODEL_PARAMS = ("common.seed", "common.device", "common.mlflow", "kinetics.train",
                "kinetics.frames.storage", *VIEWS)

PIPELINE = Pipeline(
    name="kinetics",
    title="Kinetics action recognition (BesNet)",
    data_reports=(str(P.manifest / "download.json"), str(P.report)),
    model_name="kinetics-besnet",
    metrics_file=str(P.metrics),
    results_file=str(P.results),
    summary=(("top5", "test.top5"),),
    headline="test.top1",
    baselines=("baselines.chance.top1",),
    references=(
        Reference("BesNet-50, random temporal dilation", 0.74, NOTE, "test.top1"),
        Reference("BesNet-50, no dilation (d = 1)", 0.70, NOTE, "besnet_fixed.top1",
                  when=(("besnet_fixed.dilation", 1),)),
        Reference("BesNet-50, fixed dilation 2", 0.68, NOTE, "besnet_fixed.top1",
                  when=(("besnet_fixed.dilation", 2),)),
        Reference("frame ResNet-50 features + MLP", 0.65, NOTE, "baselines.frame_model.top1"),
    ),
    rescorer="tasks.video.rescore",
    checks="tasks.video.checks",
    test_data_stage="kinetics_split",
    data_stages=("kinetics_download", "kinetics_frames", "kinetics_index", "kinetics_split"),
    ablation_skips=("kinetics_baseline",),  # the ablated switches are BesNet's
    stages=(
        Stage("kinetics_download", "tasks.video.download:download_stage",
              "the manifest from the annotation CSVs, then the annotated sections (yt-dlp, "
              "HTTP, a local folder) or the synthetic demo clips",
              params=("common.seed", "common.task_runner", "common.dask_address",
                      "kinetics.source", "kinetics.annotations", "kinetics.subset",
                      "kinetics.download", "kinetics.demo"),
              outs=(str(P.manifest), Out(str(P.clips), persist=True)),
              input_params=("kinetics.annotations.train", "kinetics.annotations.val",
                            "kinetics.annotations.test", "kinetics.annotations.classes",
                            "kinetics.download.local_dir", "kinetics.download.cookies_file")),
        Stage("kinetics_frames", "tasks.video.frames:frames_stage",
              "ffmpeg frames (JPEG) or resized video of every clip, resumable",
              params=("common.task_runner", "common.dask_address", "kinetics.frames"),
              deps=(str(P.manifest), str(P.clips)), outs=(Out(str(P.frames), persist=True),)),
        Stage("kinetics_index", "tasks.video.frames:index_stage",
              "one row per usable clip, and the data report",
              params=("kinetics.frames.storage",),
              deps=(str(P.manifest), str(P.frames)), outs=(str(P.index), str(P.report))),
        Stage("kinetics_split", "tasks.video.splits:split_stage",
              "train / train-dev / val / test clips (10% of train as val when the list has "
              "none; val reported when it has no test)",
              params=("common.seed", "kinetics.dataset.train_dev_fraction"),
              deps=(str(P.index),), outs=(str(P.split),)),
        Stage("kinetics_train", "tasks.video.training:train_stage",
              "BesNet (random temporal dilation), and the fixed-dilation twin for the ablation",
              params=(*MODEL_PARAMS, "kinetics.model", "kinetics.evaluate.ablation_dilation",
                      *SERVED_FRAMES),
              code_files=(MODEL_LOADER,),
              deps=(*DATA, str(P.clips)),  # the served model reads clips: one is its example
              outs=(str(P.artifacts / "besnet"), str(P.artifacts / "besnet_fixed"),
                    Out(str(P.checkpoints("kinetics_train")), persist=True, cache=False)),
              input_params=("kinetics.model.pretrained",), pool=GPU),
        Stage("kinetics_baseline", "tasks.video.training:baseline_stage",
              "the per-frame 2D ResNet features + pooling + MLP baseline",
              params=(*MODEL_PARAMS, "kinetics.baseline"),
              deps=DATA,
              outs=(str(P.artifacts / "baseline"),
                    Out(str(P.checkpoints("kinetics_baseline")), persist=True, cache=False)),
              input_params=("kinetics.baseline.pretrained",), pool=GPU),
        Stage("kinetics_evaluate", "tasks.video.report:evaluate_stage",
              "Top-1/Top-5 with intervals over test views, the dilation ablation, error "
              "analysis; registers BesNet",
              params=("common.seed", "common.device", "common.mlflow", "kinetics.evaluate",
                      "kinetics.dataset.test_clips", "kinetics.dataset.test_crops"),
              code_files=(MODEL_LOADER,),
              deps=(str(P.split), str(P.manifest), str(P.frames), str(P.artifacts / "besnet"),
                    str(P.artifacts / "besnet_fixed"), str(P.artifacts / "baseline")),
              outs=(str(P.results),), metrics=(str(P.metrics),), plots=(str(P.plots),),
              curves=(Curve(str(P.curves / "learning_curve.csv"), "kinetics: BesNet learning curve",
                            "epoch", LOSSES, "loss"),)),
    ),
)

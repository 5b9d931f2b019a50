"""The bill for full scale, on paper: measured rates turned into what a full run needs.

Every input is a named constant: Measured (a benchmark's figure, with the benchmark and the
README table or run it comes from), Given (a fact of the dataset or a setting of the project,
with where it is stated) or Assumed (with why). Every output line names its inputs and is
marked "(assumed)" where one of them is. Nothing is measured when it prints, so it is
deterministic; --measure reruns the one cheap measurement behind the frame-extraction inputs.

    python -m benchmarks.full_scale [--measure]
"""
from __future__ import annotations

import argparse
import math
import resource
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

HOUR = 3600.0
GB = 1e9


@dataclass(frozen=True)
class Measured:
    value: float
    unit: str
    source: str


@dataclass(frozen=True)
class Given:
    value: float
    unit: str
    source: str


@dataclass(frozen=True)
class Assumed:
    value: float
    unit: str
    why: str


Input = Measured | Given | Assumed

GPU_RUN = "benchmarks.gpu_train, the H200 run of the README table (2026-12), K = 8, 224 px"
EXTRACT_RUN = "--measure: extract_clip, 10 s 640x360 testsrc2 clip, best of 3 (2026-12-01)"

INPUTS: dict[str, Input] = {
    # Kinetics-400
    "k400_train_clips": Assumed(240_000, "clips", "the official train list (246k rows) less "
                                "clips gone from YouTube"),
    "k400_val_clips": Given(19_906, "clips", "rows of the official val list "
                            "(shared/data/kinetics/kinetics400_val.csv)"),
    "clip_seconds": Given(10, "s", "every K400 clip is a 10 s section (shared/data/SOURCES.md)"),
    "bitrate_360p": Assumed(0.7, "Mbit/s", "typical YouTube 360p video + audio; the 3 shared "
                            "256-line samples: 0.68"),
    "extract_cpu_jpeg": Measured(0.243, "CPU-s/clip", EXTRACT_RUN),
    "extract_cpu_video": Measured(0.234, "CPU-s/clip", EXTRACT_RUN),
    "frames_bytes_jpeg": Measured(834_882, "B/clip", EXTRACT_RUN + "; real samples 775-825k"),
    "frames_bytes_video": Measured(604_595, "B/clip", EXTRACT_RUN + "; real samples 598-778k"),
    "frames_fps": Given(8, "frames/s", "params.yaml kinetics.frames.fps"),
    "frame_workers": Given(8, "processes", "profiles/kinetics-400.yaml kinetics.frames.workers"),
    "clip_frames": Given(8, "frames", "profiles/kinetics-400.yaml kinetics.dataset.frames (K)"),
    "epochs": Given(50, "epochs", "profiles/kinetics-400.yaml kinetics.train.epochs"),
    "loader_jpeg": Measured(161, "clips/CPU-s", "benchmarks.loader, README loader table, JPEG "
                            "K = 8 train loader, 1 worker (its and the main process's CPU)"),
    "loader_video": Measured(43.5, "clips/CPU-s", "benchmarks.loader, README loader table, mp4 "
                             "K = 8 train loader, 1 worker"),
    "besnet_eager": Measured(373, "clips/s", GPU_RUN + ", BesNet-50 eager"),
    "besnet_compiled": Measured(655, "clips/s", GPU_RUN + ", BesNet-50 torch.compile"),
    "gpus": Given(8, "GPUs", "the multi-GPU case planned for (one node)"),
    "ddp_efficiency": Assumed(0.9, "", "8-GPU DDP throughput / 8 x one GPU; not measured"),
    # Quora
    "quora_pairs": Given(404_290, "pairs", "the full dump, quora_duplicate_questions.tsv"),
    "embed_seconds_400k": Measured(3.92, "s/400k qs", "benchmarks.quora_embed, vectorised end "
                                   "to end, --n 400000 (cfb9d3b, 2026-12-01)"),
    # Crypto
    "years": Given(10, "years", "ten years of one symbol"),
    "rss_train_1m": Measured(899, "MiB", "benchmarks.crypto_memory, README crypto section, "
                             "training path, 1M bars"),
    "rss_train_5m": Measured(2_275, "MiB", "benchmarks.crypto_memory, README crypto section, "
                             "training path, 5M bars"),
    "rss_stages_5m": Measured(3_586, "MiB", "benchmarks.crypto_memory --stages, README crypto "
                              "section, features + split, 5M bars"),
    "page_candles": Assumed(1000, "candles/req", "ccxt 4.5.90 binance (params.yaml) "
                            "fetchOHLCV limit; crypto.live.page_limit: null"),
    "rate_limit_s": Assumed(0.05, "s/req", "ccxt 4.5.90 binance rateLimit (crypto.live."
                            "rate_limit: true)"),
    "request_latency_s": Assumed(0.2, "s/req", "one round trip to the exchange; not measured"),
}


@dataclass(frozen=True)
class Figure:
    """One output: a value computed from named inputs, or None where a measurement is missing."""
    section: str
    label: str
    value: float | None
    unit: str
    inputs: tuple[str, ...]
    missing: str = ""
    assumes: str = ""  # an assumption in the formula itself, e.g. an extrapolation


def v(name: str) -> float:
    return INPUTS[name].value


def kinetics_figures() -> list[Figure]:
    """Download, extraction, disk, loader cores and GPU-hours for Kinetics-400."""
    s = "Kinetics-400"
    clips = v("k400_train_clips") + v("k400_val_clips")
    both = ("k400_train_clips", "k400_val_clips")
    download_bytes = v("bitrate_360p") * 1e6 / 8 * v("clip_seconds")
    frames_per_clip = v("frames_fps") * v("clip_seconds")
    out = [
        Figure(s, "clips, train + val", clips, "clips", both),
        Figure(s, "download, 360p sections", clips * download_bytes / GB, "GB",
               (*both, "bitrate_360p", "clip_seconds")),
        Figure(s, "download time", None, "", (),
               "no rate measured (yt-dlp sections a second, per host and IP)"),
    ]
    for storage in ("jpeg", "video"):
        cpu = f"extract_cpu_{storage}"
        out += [
            Figure(s, f"frame extraction ({storage}), CPU", clips * v(cpu) / HOUR, "CPU-h",
                   (*both, cpu)),
            Figure(s, f"frame extraction ({storage}), wall, {v('frame_workers'):.0f} workers",
                   clips * v(cpu) / v("frame_workers") / HOUR, "h", (*both, cpu, "frame_workers")),
            Figure(s, f"disk, frames ({storage})", clips * v(f"frames_bytes_{storage}") / GB, "GB",
                   (*both, f"frames_bytes_{storage}")),
        ]
    read_jpeg = v("besnet_compiled") * v("clip_frames") * v("frames_bytes_jpeg") / frames_per_clip
    out += [
        Figure(s, "disk read per GPU, jpeg (K frames), compiled", read_jpeg / 1e6, "MB/s",
               ("besnet_compiled", "clip_frames", "frames_bytes_jpeg", "frames_fps",
                "clip_seconds")),
        Figure(s, "disk read per GPU, video (whole mp4), compiled",
               v("besnet_compiled") * v("frames_bytes_video") / 1e6, "MB/s",
               ("besnet_compiled", "frames_bytes_video")),
    ]
    for storage in ("jpeg", "video"):
        for mode in ("eager", "compiled"):
            rate, loader = f"besnet_{mode}", f"loader_{storage}"
            out.append(Figure(s, f"loader cores per GPU, {storage}, BesNet {mode}",
                              v(rate) / v(loader), "cores", (rate, loader)))
        out.append(Figure(s, f"loader cores for {v('gpus'):.0f} GPUs, {storage}, compiled",
                          v("gpus") * v("ddp_efficiency") * v("besnet_compiled") / v(loader),
                          "cores", ("gpus", "ddp_efficiency", "besnet_compiled", loader)))
    return out + besnet_gpu_figures() + [baseline_missing()]


def besnet_gpu_figures() -> list[Figure]:
    """GPU-hours a training epoch and a full schedule, on one GPU and on `gpus` with DDP."""
    s, out = "Kinetics-400", []
    for mode in ("eager", "compiled"):
        rate = f"besnet_{mode}"
        epoch = v("k400_train_clips") / v(rate) / HOUR
        schedule = epoch * v("epochs")
        wall = schedule / (v("gpus") * v("ddp_efficiency"))
        out += [
            Figure(s, f"BesNet-50 {mode}: one epoch, 1 GPU", epoch, "GPU-h",
                   ("k400_train_clips", rate)),
            Figure(s, f"BesNet-50 {mode}: full schedule, 1 GPU", schedule, "GPU-h",
                   ("k400_train_clips", rate, "epochs")),
            Figure(s, f"BesNet-50 {mode}: full schedule, {v('gpus'):.0f} GPUs, wall", wall, "h",
                   ("k400_train_clips", rate, "epochs", "gpus", "ddp_efficiency")),
            Figure(s, f"BesNet-50 {mode}: full schedule, {v('gpus'):.0f} GPUs",
                   wall * v("gpus"), "GPU-h",
                   ("k400_train_clips", rate, "epochs", "gpus", "ddp_efficiency")),
        ]
    return out


def baseline_missing() -> Figure:
    return Figure("Kinetics-400", "frame baseline: GPU-hours", None, "", (),
                  "no GPU step rate: benchmarks.gpu_train has no frame-baseline case "
                  "(video_step's row 'frames' on cuda)")


def quora_figures() -> list[Figure]:
    """The full dump's question vectors end to end; training has no recorded rate."""
    s = "Quora"
    questions = 2 * v("quora_pairs")  # two questions a pair
    return [
        Figure(s, "questions (2 a pair)", questions, "qs", ("quora_pairs",)),
        Figure(s, "question vectors end to end, this CPU",
               v("embed_seconds_400k") * questions / 400_000, "s",
               ("quora_pairs", "embed_seconds_400k")),
        Figure(s, "training epochs", None, "", (),
               "no training rate recorded in README (pairs/s of quora_train at full size)"),
    ]


def crypto_figures() -> list[Figure]:
    """Ten years of 1-minute candles: requests, ingestion time, peak memory."""
    s = "Crypto, 1-minute candles"
    bars = v("years") * 365.25 * 24 * 60
    pages = math.ceil(bars / v("page_candles"))
    slope = (v("rss_train_5m") - v("rss_train_1m")) / 4e6
    return [
        Figure(s, "bars (365.25-day years)", bars, "bars", ("years",)),
        Figure(s, "requests", pages, "req", ("years", "page_candles")),
        Figure(s, "ingestion, at the rate limit alone", pages * v("rate_limit_s") / 60, "min",
               ("years", "page_candles", "rate_limit_s")),
        Figure(s, "ingestion, one round trip a request",
               pages * max(v("rate_limit_s"), v("request_latency_s")) / 60, "min",
               ("years", "page_candles", "rate_limit_s", "request_latency_s")),
        Figure(s, "training peak RSS", v("rss_train_5m") + slope * (bars - 5e6), "MiB",
               ("years", "rss_train_1m", "rss_train_5m"), assumes="the line through 1M and 5M"),
        Figure(s, "features + split peak RSS", v("rss_stages_5m") * bars / 5e6, "MiB",
               ("years", "rss_stages_5m"), assumes="in proportion to bars"),
        Figure(s, "ingestion measured", None, "", (),
               "benchmarks.crypto_ingest's candles/s (fake server) is not recorded in README"),
    ]


def figures() -> list[Figure]:
    return kinetics_figures() + quora_figures() + crypto_figures()


def input_line(name: str, item: Input) -> str:
    kind = {Measured: "measured", Given: "given", Assumed: "(assumed)"}[type(item)]
    where = item.why if isinstance(item, Assumed) else item.source
    return f"  {name:<19} {item.value:>9,.6g} {item.unit:<11} {kind}: {where}"


def figure_line(fig: Figure) -> str:
    if fig.value is None:
        return f"  {fig.label:<50} {'-':>9}           missing: {fig.missing}"
    names = [f"{n} (assumed)" if isinstance(INPUTS[n], Assumed) else n for n in fig.inputs]
    if fig.assumes:
        names.append(f"(assumed) {fig.assumes}")
    value = f"{fig.value:,.{decimals(fig.value)}f}"
    return f"  {fig.label:<50} {value:>9} {fig.unit:<9} <- {', '.join(names)}"


def decimals(value: float) -> int:
    return 0 if abs(value) >= 100 or value == int(value) else 2 if abs(value) < 10 else 1


def report() -> str:
    lines = ["Inputs"] + [input_line(n, i) for n, i in INPUTS.items()]
    section = None
    for fig in figures():
        if fig.section != section:
            section = fig.section
            lines += ["", section]
        lines.append(figure_line(fig))
    return "\n".join(lines)


def measure_extraction() -> dict[str, tuple[int, float]]:
    """Bytes and CPU-seconds a clip of the frames stage's own extraction, jpeg and video."""
    from tasks.config import KineticsFrames
    from tasks.media import ffmpeg_path
    from tasks.video.frames import extract_clip

    def child_cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    def size(path: Path) -> int:
        files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
        return sum(f.stat().st_size for f in files)

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "source.mp4"
        subprocess.run([ffmpeg_path(), "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
                        "testsrc2=size=640x360:rate=30:duration=10", "-c:v", "libx264",
                        "-pix_fmt", "yuv420p", str(clip)], check=True)
        for storage in ("jpeg", "video"):
            settings = KineticsFrames(storage=storage, fps=v("frames_fps"), short_side=256)
            best = math.inf
            for i in range(3):
                dest = Path(tmp) / (f"{storage}{i}.mp4" if storage == "video" else f"{storage}{i}")
                start = child_cpu()
                extract_clip(clip, dest, settings)
                best = min(best, child_cpu() - start)
            out[storage] = (size(dest), best)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measure", action="store_true",
                        help="rerun the extraction measurement behind extract_cpu_* and "
                             "frames_bytes_* instead of printing the bill")
    if parser.parse_args().measure:
        for storage, (size, cpu) in measure_extraction().items():
            print(f"{storage}: {size:,} B/clip, {cpu:.3f} CPU-s/clip")
        return
    print(report())


if __name__ == "__main__":
    main()

"""The report stage: a static results site (reports/site/index.html and one page per pipeline)
built from what the pipelines wrote — each evaluate stage's results file
(reports/<pipeline>/results.json), data reports, plots, ablation tables and the nightly
history.

Self-contained by construction: styles are inline, images are embedded as data URIs, and no
page holds an http(s) URL (a URL found in the data — a download source, say — is shown as
text without its scheme), so the site reads the same on a laptop offline, from a zip, or from
a CI artifact. Every headline number carries `data-metric` (its dotted key in the results file)
and `data-value` (the exact value), which is how the browser test checks the page against
reports/*/results.json.
"""
from __future__ import annotations

import base64
import html
import io
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

# the declarations the pages are built from (imported by name, so they are code deps)
import tasks.crypto.pipeline
import tasks.quora.pipeline
import tasks.video.pipeline  # noqa: F401
from tasks.errors import DataError
from tasks.logs import get_logger
from tasks.pipeline import Pipeline, Stage, declarations
from tasks.storage import atomic_dir, read_json

SITE = Path("reports/site")
ABLATIONS = Path("reports/ablations")
NIGHTLY = Path("reports/nightly")
_URL = re.compile(r"\b(?:https?|wss?|ftp)://", re.IGNORECASE)

CSS = """
:root { color-scheme: light; --ink:#1d2433; --mute:#5b6475; --line:#d9dee7; --ok:#13795b;
        --warn:#a15c00; --bg:#f7f8fa; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
       color:var(--ink); background:var(--bg); }
header { background:#1d2433; color:#fff; padding:.6rem 1rem; }
header a { color:#fff; margin-right:1rem; text-decoration:none; }
header a[aria-current] { text-decoration:underline; }
main { max-width:1100px; margin:0 auto; padding:1rem; }
section { background:#fff; border:1px solid var(--line); border-radius:6px; padding:.8rem 1rem;
          margin:1rem 0; }
h1 { font-size:1.5rem; margin:.4rem 0; } h2 { font-size:1.15rem; margin:.2rem 0 .6rem; }
.scroll { overflow-x:auto; }
table { border-collapse:collapse; min-width:60%; }
th, td { text-align:left; padding:.25rem .6rem; border-bottom:1px solid var(--line);
         vertical-align:top; }
th { color:var(--mute); font-weight:600; }
td.n { text-align:right; font-variant-numeric:tabular-nums; white-space:nowrap; }
.big { font-size:1.6rem; font-weight:700; }
.skill { color:var(--ok); font-weight:600; } .noskill { color:var(--warn); font-weight:600; }
.mute { color:var(--mute); }
.cards { display:grid; grid-template-columns:repeat(auto-fill,minmax(280px,1fr)); gap:1rem; }
.figs { display:grid; grid-template-columns:repeat(auto-fill,minmax(320px,1fr)); gap:1rem; }
figure { margin:0; } figure img { max-width:100%; height:auto; border:1px solid var(--line); }
figcaption { color:var(--mute); font-size:.9rem; }
"""


# ---------------------------------------------------------------- HTML pieces
def text(value: Any) -> str:
    """Escaped text; a URL's scheme is dropped so the page never links or loads outside."""
    return html.escape(_URL.sub("", str(value)))


def fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "yes", False: "no", None: "—"}[value]
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def num(value: Any, key: str | None = None, digits: int = 3) -> str:
    """A number; with `key`, marked with the metrics-file key and exact value it shows."""
    if key is None or not isinstance(value, int | float) or isinstance(value, bool):
        return text(fmt(value, digits))
    return (f'<span class="num" data-metric="{text(key)}" data-value="{value!r}">'
            f"{text(fmt(value, digits))}</span>")


def ci(interval: Mapping[str, float] | None) -> str:
    if not interval:
        return ""
    return f"[{fmt(interval['low'])}, {fmt(interval['high'])}]"


def table(headers: Iterable[str], rows: Iterable[Iterable[str]], numeric: set[int] = frozenset()
          ) -> str:
    """An HTML table of already-escaped cells; columns in `numeric` are right-aligned."""
    head = "".join(f"<th>{text(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f'<td{" class=n" if i in numeric else ""}>{cell}</td>'
                                    for i, cell in enumerate(row)) + "</tr>" for row in rows)
    return f'<div class="scroll"><table><tr>{head}</tr>{body}</table></div>'


def section(title: str, body: str, anchor: str) -> str:
    return f'<section id="{anchor}"><h2>{text(title)}</h2>{body}</section>'


DATA_ROWS = 80  # rows of one data report on the page; the rest is in the file


def scalars(node: Any, prefix: str = "") -> list[tuple[str, str]]:
    """A nested JSON report as (dotted key, value) rows: what a data report says, generically
    (lists are summarised by their length and first items)."""
    rows: list[tuple[str, str]] = []
    if isinstance(node, Mapping):
        for key, value in node.items():
            rows.extend(scalars(value, f"{prefix}{key}."))
    elif isinstance(node, list):
        shown = ", ".join(fmt(v) for v in node[:5] if not isinstance(v, Mapping | list))
        rows.append((prefix.rstrip("."), f"{len(node)} item(s)" + (f": {shown}" if shown else "")))
    else:
        rows.append((prefix.rstrip("."), fmt(node)))
    return rows


def page(title: str, current: str, specs: list[Pipeline], body: str) -> str:
    links = ['<a href="index.html"' + (' aria-current="page"' if current == "index" else "")
             + ">Overview</a>"]
    links += [f'<a href="{p.name}.html"' + (' aria-current="page"' if current == p.name else "")
              + f">{text(p.name)}</a>" for p in specs]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{text(title)} · ReproLab</title><style>{CSS}</style></head><body>"
            f"<header><nav>{''.join(links)}</nav></header><main><h1>{text(title)}</h1>"
            f"{body}</main></body></html>\n")


# ---------------------------------------------------------------- what every pipeline shows
def headline_value(metrics: Mapping, spec: Pipeline) -> tuple[float, Mapping | None]:
    from tasks.evaluate import lookup

    node = lookup(metrics, spec.headline.rsplit(".", 1)[0])
    metric = spec.headline.rsplit(".", 1)[1]
    return node[metric], node.get(f"{metric}_ci")


def verdict_line(metrics: Mapping) -> str:
    verdict = metrics.get("verdict")
    if not verdict:
        return '<p class="mute">no verdict in this metrics file</p>'
    cls = "skill" if verdict["beats_strongest_baseline"] else "noskill"
    return f'<p class="{cls}" data-verdict="{text(verdict["beats_strongest_baseline"])}">' \
           f"{text(verdict['text'])}</p>"


def headline_section(metrics: Mapping, spec: Pipeline) -> str:
    value, interval = headline_value(metrics, spec)
    metric = spec.headline.rsplit(".", 1)[1]
    rows = []
    beats = (metrics.get("verdict") or {}).get("beats", {})
    for name, row in (metrics.get("baselines") or {}).items():
        rows.append((text(name), num(row.get(metric), f"baselines.{name}.{metric}"),
                     text(ci(row.get(f"{metric}_ci"))), text(fmt(beats.get(name)))))
    body = (f'<p><span class="big">{num(value, spec.headline)}</span> '
            f'<span class="mute">{text(spec.headline)}, 95% CI {text(ci(interval))}</span></p>'
            + verdict_line(metrics)
            + table(("baseline", metric, "95% CI", "model's interval clears it"), rows, {1}))
    return section("Headline and baselines", body, "headline")


def references_section(metrics: Mapping) -> str:
    refs = metrics.get("references") or []
    if not refs:
        return ""
    rows = [(text(r["label"]), num(r["theirs"], digits=2),
             num(r["ours"], r["ours_key"]) if r["ours"] is not None else "—",
             text(r["measured_on"] if r["ours"] is not None else
                  f"{r['measured_on']}; ours: {r['why_not']}")) for r in refs]
    body = ('<p class="mute">Their numbers were measured on their data; ours on this run\'s. '
            "Read a row as a direction to reproduce, not a score to match.</p>"
            + table(("configuration", "theirs", "ours", "measured on"), rows, {1, 2}))
    return section("The research notes' numbers beside ours", body, "references")


def diagnosis_section(metrics: Mapping) -> str:
    diagnosis = metrics.get("diagnosis")
    if not diagnosis:
        return ""
    splits = [k for k in ("train", "train_dev", "dev", "test") if k in diagnosis["errors"]]
    gaps = ("avoidable_bias", "variance", "data_mismatch", "dev_overfitting")
    errors = table([f"{k.replace('_', '-')} error" for k in splits],
                   [[num(diagnosis["errors"][k], f"diagnosis.errors.{k}") for k in splits]],
                   set(range(len(splits))))
    sizes = table([k.replace("_", " ") for k in gaps],
                  [[num(diagnosis.get(k), f"diagnosis.{k}") for k in gaps]], set(range(4)))
    body = (errors + sizes
            + f"<p>Largest: <b>{text(diagnosis['largest'].replace('_', ' '))}</b> — "
              f"{text(diagnosis['next_step'])}</p>")
    return section("Error analysis: train / train-dev / dev / test", body, "errors")


def data_section(root: Path, spec: Pipeline) -> str:
    parts = []
    for rel in spec.data_reports:
        path = root / rel
        if path.exists():
            rows = scalars(read_json(path))
            more = (f'<p class="mute">{len(rows) - DATA_ROWS} more fields in {text(rel)}</p>'
                    if len(rows) > DATA_ROWS else "")
            parts.append(f"<h3>{text(rel)}</h3>" + table(
                ("field", "value"), [(text(k), text(v)) for k, v in rows[:DATA_ROWS]]) + more)
    if not parts:
        return ""
    return section("Data: rows in and kept, quarantine, gaps", "".join(parts), "data")


def ablations_section(root: Path, spec: Pipeline) -> str:
    store = root / ABLATIONS / f"{spec.name}.json"
    if not store.exists():
        return ""
    parts = []
    for name, grid in sorted(read_json(store).items()):
        rows = [(text(r["config"]), text(r["metric"]), num(r["mean"], digits=4),
                 text(f"[{fmt(r['ci_low'], 4)}, {fmt(r['ci_high'], 4)}]"),
                 num(r.get("diff"), digits=4),
                 text("" if r.get("diff_low") is None else
                      f"[{r['diff_low']:+.4f}, {r['diff_high']:+.4f}]"),
                 text(fmt(r.get("excludes_zero")))) for r in grid["rows"]]
        parts.append(f"<h3>{text(name)} <span class=mute>(seeds {text(grid['seeds'])})</span>"
                     "</h3>" + table(("config", "metric", "mean", "95% CI", "vs reference",
                                      "difference CI", "excludes 0"), rows, {2, 4}))
    return section("Ablations", "".join(parts), "ablations")


# ---------------------------------------------------------------- the nightly's records
TIME = "%Y-%m-%dT%H:%M:%SZ"  # every time the nightly writes, in UTC
SHORT = 140                  # characters of a reason on the overview


def optional_json(path: Path) -> Any:
    """A file the nightly writes, or None when it is missing, empty or not JSON: the site
    builds without it (the log names a broken one)."""
    if not path.is_file() or path.stat().st_size == 0:
        return None
    try:
        return read_json(path)
    except DataError as exc:
        get_logger().warning("report site: left out %s", exc)
        return None


def nights(root: Path) -> list[dict]:
    """Every recorded night, oldest first (reports/nightly/nights/*.json; a move of the alias
    by hand is a record too, with by: person)."""
    found = (optional_json(p) for p in sorted((root / NIGHTLY / "nights").glob("*.json")))
    return [night for night in found if isinstance(night, dict) and night.get("night")]


def entries(history: list[dict], pipeline: str) -> list[tuple[dict, dict]]:
    """(night, row) for each record of `pipeline`, oldest first."""
    return [(night, row) for night in history for row in night.get("pipelines") or []
            if isinstance(row, dict) and row.get("pipeline") == pipeline]


def nightly_file(root: Path, folder: str, pipeline: str) -> dict:
    """reports/nightly/<folder>/<pipeline>.json ({} when it is missing or empty)."""
    record = optional_json(root / NIGHTLY / folder / f"{pipeline}.json")
    return record if isinstance(record, dict) else {}


def spans_of(root: Path, pipeline: str) -> list[dict]:
    """The champion alias's spans (reports/nightly/champions/<pipeline>.json), oldest first."""
    spans = nightly_file(root, "champions", pipeline).get("history") or []
    return [s for s in spans if isinstance(s, dict) and parse_time(s.get("from"))]


def parse_time(value: Any) -> datetime | None:
    try:
        return datetime.strptime(str(value), TIME).replace(tzinfo=UTC)
    except ValueError:
        return None


def duration(since: str, until: str | None) -> str:
    """'3d 4h' (or '5h 12m') from one UTC time to another; '' if either is unreadable."""
    start, end = parse_time(since), parse_time(until)
    if start is None or end is None:
        return ""
    days, rest = divmod(max(int((end - start).total_seconds()), 0), 86400)
    hours, rest = divmod(rest, 3600)
    return f"{days}d {hours}h" if days else f"{hours}h {rest // 60}m"


def as_of(history: list[dict], spans: list[dict]) -> str | None:
    """The newest time the records hold: an open span's age is counted to it, so the site is
    the same whenever it is built from the same files."""
    times = [night["night"] for night in history] + [
        s[key] for s in spans for key in ("from", "until") if s.get(key)]
    return max((t for t in times if parse_time(t)), key=parse_time, default=None)


def shorten(value: str, limit: int = SHORT) -> str:
    return value if len(value) <= limit else value[:limit - 1].rstrip() + "…"


# ---------------------------------------------------------------- one night's cells
def signed(value: Any) -> str:
    return f"{value:+.4f}" if isinstance(value, int | float) else "?"


def difference_text(difference: Mapping | None) -> str:
    """'+0.0100 [-0.0050, +0.0250]': the paired difference and its 95% interval."""
    if not isinstance(difference, Mapping):
        return ""
    return (f"{signed(difference.get('mean'))} [{signed(difference.get('low'))}, "
            f"{signed(difference.get('high'))}]")


def rule_bound(verdict: Mapping) -> float | None:
    """The value the interval's lower bound had to clear (tasks.champion.Rule.bound)."""
    margin = verdict.get("margin")
    if not isinstance(margin, int | float):
        return None
    return {"non_inferior": -margin, "superior": margin}.get(verdict.get("rule"))


def version_value(value: Any, version: Any) -> str:
    parts = (f"{value:.4f}" if isinstance(value, int | float) else None,
             None if version is None else f"(v{version})")
    return " ".join(p for p in parts if p)


def scores_cell(verdict: Mapping) -> str:
    old = version_value(verdict.get("old"), verdict.get("champion"))
    new = version_value(verdict.get("new"), verdict.get("challenger"))
    return f"{old or '—'} → {new or '—'}" if old or new else ""


def data_cell(data: Mapping | None) -> str:
    if not isinstance(data, Mapping):
        return ""
    if not data.get("changed"):
        return "none"
    return f"+{data.get('bytes_added', '?')} bytes, +{data.get('files_added', '?')} files"


def drifted(checks: Mapping) -> list[str]:
    return [col for col, d in (checks.get("drift") or {}).items()
            if isinstance(d, Mapping) and d.get("drifted")]


def checks_cell(checks: Mapping | None) -> str:
    """'passed (120 new rows)', 'failed (80 new rows, drift: x, y)', marked when failed."""
    if not isinstance(checks, Mapping):
        return ""
    cols = drifted(checks)
    detail = text(f"({checks.get('rows', '?')} new rows"
                  + (f", drift: {', '.join(cols)}" if cols else "") + ")")
    word = "passed" if checks.get("passed") else '<b class="noskill">failed</b>'
    return f"{word} {detail}"


def outcome(row: Mapping) -> tuple[str, str]:
    """(promoted / kept / stopped / failed / '', why) of one record."""
    verdict = row.get("verdict") if isinstance(row.get("verdict"), Mapping) else {}
    if row.get("error"):
        return "failed", str(row["error"])
    if row.get("stopped"):
        return "stopped", str(row["stopped"])
    if not verdict:
        return "", ""
    return ("promoted" if verdict.get("promoted") else "kept"), str(verdict.get("reason", ""))


def why_cell(row: Mapping) -> str:
    word, why = outcome(row)
    if word in ("failed", "stopped"):
        return f'<b class="noskill" data-outcome="{word}">{word}</b>: {text(why)}'
    return text(why)


def night_row(night: Mapping, row: Mapping) -> tuple[str, ...]:
    verdict = row.get("verdict") if isinstance(row.get("verdict"), Mapping) else {}
    by = night.get("by") or verdict.get("by") or "nightly"
    stages = row.get("stages_run")
    return (text(night["night"]), text(by), text(data_cell(row.get("data"))),
            checks_cell(row.get("checks")),
            text(", ".join(stages) or "none") if isinstance(stages, list) else "",
            text(scores_cell(verdict)), text(difference_text(verdict.get("difference"))),
            text(promoted_cell(row, verdict)), why_cell(row))


def promoted_cell(row: Mapping, verdict: Mapping) -> str:
    if verdict:
        return fmt(bool(verdict.get("promoted")))
    return "no" if outcome(row)[0] else ""  # a failed or stopped night promotes nothing


NIGHT_HEADERS = ("night", "by", "new data", "data checks", "stages rerun",
                 "champion → challenger", "difference [95% CI]", "promoted", "why")


def night_rows(history: list[dict], pipeline: str) -> list[tuple[str, ...]]:
    return [night_row(night, row) for night, row in entries(history, pipeline)]


def nightly_section(history: list[dict], spec: Pipeline) -> str:
    rows = night_rows(history, spec.name)
    if not rows:
        return ""
    return section("Nightly retraining", table(NIGHT_HEADERS, rows), "nightly")


# ---------------------------------------------------------------- plots
def figure_html(data: bytes, caption: str) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{encoded}" alt="{text(caption)}">'
            f"<figcaption>{text(caption)}</figcaption></figure>")


def image(path: Path) -> str:
    return figure_html(path.read_bytes(), path.stem.replace("_", " "))


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def rendered(fig: Any, caption: str) -> str:
    """A matplotlib figure as an inline PNG (no version stamp: the same bytes every build)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    pyplot().close(fig)
    return figure_html(buffer.getvalue(), caption)


def time_axis(ax: Any, times: list[datetime]) -> None:
    """Dates on x, padded so a single time still has a visible range."""
    import matplotlib.dates as mdates

    low, high = min(times), max(times)
    pad = max((high - low) * 0.05, timedelta(hours=12))
    ax.set_xlim(low - pad, high + pad)
    locator = mdates.AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))


# ---------------------------------------------------------------- the champion's timeline
def judged(history: list[dict], pipeline: str) -> list[tuple[datetime, dict]]:
    """(night, verdict) of each night whose verdict has a paired difference, oldest first."""
    out = []
    for night, row in entries(history, pipeline):
        verdict = row.get("verdict")
        difference = isinstance(verdict, Mapping) and verdict.get("difference")
        if (isinstance(difference, Mapping) and parse_time(night["night"])
                and all(isinstance(difference.get(k), int | float)
                        for k in ("mean", "low", "high"))):
            out.append((parse_time(night["night"]), verdict))
    return out


def timeline_rows(spans: list[dict], now: str | None) -> list[tuple[str, ...]]:
    return [(text(f"v{s.get('version', '?')}"), text(s["from"]), text(s.get("until") or "now"),
             text(duration(s["from"], s.get("until") or now)), text(s.get("by", "")),
             text(s.get("why", "")), text(s.get("ended", ""))) for s in spans]


def draw_spans(ax: Any, spans: list[dict], now: datetime) -> None:
    """The alias as horizontal bars, one row per version."""
    from matplotlib.patches import Patch

    labels = sorted({str(s.get("version")) for s in spans}, key=lambda v: (len(v), v))
    colors = {"nightly": "#3b6fb6", "person": "#d08a1e"}
    for span in spans:
        start = parse_time(span["from"])
        end = max(parse_time(span.get("until")) or now, start)
        ax.barh(labels.index(str(span.get("version"))), end - start, left=start, height=0.6,
                color=colors.get(span.get("by"), "#888888"), edgecolor="#1d2433")
    ax.set_yticks(range(len(labels)), [f"v{v}" for v in labels])
    ax.set_ylabel("champion")
    ax.set_ylim(-0.6, len(labels) - 0.4)
    legend(ax, [Patch(color=color, label=f"moved by {by}") for by, color in colors.items()
                if any(s.get("by") == by for s in spans)])


def draw_differences(ax: Any, points: list[tuple[datetime, dict]]) -> None:
    """Each judged night's paired difference with its 95% interval; the rule's bound dashed;
    promoted nights filled."""
    for at, verdict in points:
        d, promoted = verdict["difference"], bool(verdict.get("promoted"))
        ax.errorbar([at], [d["mean"]], yerr=[[d["mean"] - d["low"]], [d["high"] - d["mean"]]],
                    fmt="o", capsize=4, color="#13795b" if promoted else "#5b6475",
                    markerfacecolor="#13795b" if promoted else "white")
    bounds = {(v.get("rule"), v.get("margin"), rule_bound(v)) for _, v in points}
    for rule, margin, bound in sorted(b for b in bounds if b[2] is not None):
        ax.axhline(bound, color="#a15c00", linestyle="--", linewidth=1,
                   label=f"bound {bound:+.4f} ({rule}, margin {margin})")
    ax.axhline(0, color="#d9dee7", linewidth=1)
    ax.errorbar([], [], fmt="o", color="#13795b", label="promoted")
    ax.errorbar([], [], fmt="o", color="#5b6475", markerfacecolor="white", label="kept")
    ax.set_ylabel("challenger − champion")
    legend(ax)


def legend(ax: Any, handles: list | None = None) -> None:
    """Outside the plot, on the right: it never hides a bar or a point."""
    if handles == []:
        return
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)


def timeline_plot(spans: list[dict], points: list[tuple[datetime, dict]],
                  now: str | None) -> str:
    if not spans and not points:
        return ""
    plt = pyplot()
    end = parse_time(now) or max(at for at, _ in points)
    axes_wanted = [kind for kind, have in (("spans", spans), ("points", points)) if have]
    fig, axes = plt.subplots(len(axes_wanted), 1, sharex=True, squeeze=False,
                             figsize=(9, 2.2 + 1.6 * len(axes_wanted)))
    times = [end] + [at for at, _ in points] + [parse_time(s["from"]) for s in spans]
    for ax, kind in zip(axes[:, 0], axes_wanted, strict=True):
        if kind == "spans":
            draw_spans(ax, spans, end)
        else:
            draw_differences(ax, points)
        time_axis(ax, times)
    return rendered(fig, "champion alias over time; each judged night's paired difference "
                         "with its 95% interval")


def timeline_section(root: Path, history: list[dict], spec: Pipeline) -> str:
    spans, points = spans_of(root, spec.name), judged(history, spec.name)
    if not spans and not points:
        return ""
    now = as_of(history, spans)
    body = ""
    if spans:
        body += table(("version", "from", "until", "held for", "by", "why", "ended"),
                      timeline_rows(spans, now), {3})
        body += f'<p class="mute">An open span is counted to {text(now)}, the newest record.</p>'
    body += '<div class="figs">' + timeline_plot(spans, points, now) + "</div>"
    return section("Champion timeline", body, "timeline")


# ---------------------------------------------------------------- data checks
def share(value: Any) -> str:
    return f"{value:.2%}" if isinstance(value, int | float) else ""


def p_value(value: Any) -> str:
    return f"{value:.2g}" if isinstance(value, int | float) else "—"


def column_rows(checks: Mapping) -> list[tuple[str, ...]]:
    """Per column: KS, p-value, PSI, drifted, nulls, out of range (whatever was measured)."""
    drift, nulls = checks.get("drift") or {}, checks.get("nulls") or {}
    ranges = checks.get("out_of_range") or {}
    rows = []
    for col in sorted({*drift, *nulls, *ranges}):
        d = drift.get(col) if isinstance(drift.get(col), Mapping) else {}
        rows.append((text(col), num(d.get("ks")), text(p_value(d.get("p_value"))),
                     num(d.get("psi")), text(fmt(d.get("drifted")) if d else "not tested"),
                     text(share(nulls.get(col))), text(share(ranges.get(col)))))
    return rows


def listed(label: str, items: Any) -> str:
    items = [i for i in items or [] if i]
    if not items:
        return ""
    return f"<p>{text(label)}:</p><ul>" + "".join(f"<li>{text(i)}</li>" for i in items) + "</ul>"


def checks_block(night: Mapping, checks: Mapping) -> str:
    shift = checks.get("label_shift")
    head = (f"<h3>{text(night['night'])}: {checks_cell(checks)}</h3>"
            f'<p class="mute">reference: {text(checks.get("reference", "—"))}'
            f"{text(f'; label shift {shift:.3f}') if isinstance(shift, int | float) else ''}"
            "</p>")
    rows = column_rows(checks)
    figures = table(("column", "KS", "p-value", "PSI", "drifted", "nulls", "out of range"),
                    rows, {1, 2, 3, 5, 6}) if rows else ""
    return (head + figures + listed("Why it failed", checks.get("reasons"))
            + listed("Notes", checks.get("notes")))


def held_block(held: Mapping) -> str:
    if not held:
        return ""
    keys = held.get("keys") or []
    return (f'<p class="noskill">{len(keys)} row(s) held back by a failed check, checked again '
            "next night.</p>" + listed("Held because", held.get("reasons")))


def psi_plot(checked: list[tuple[Mapping, Mapping]]) -> str:
    """PSI per column over the nights that measured drift (only when there are several)."""
    measured = [(parse_time(n["night"]), c.get("drift")) for n, c in checked
                if parse_time(n["night"]) and isinstance(c.get("drift"), Mapping)
                and c.get("drift")]
    if len(measured) < 2:
        return ""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 3.4))
    for col in sorted({col for _, drift in measured for col in drift}):
        points = [(at, drift[col].get("psi")) for at, drift in measured
                  if isinstance(drift.get(col), Mapping)
                  and isinstance(drift[col].get("psi"), int | float)]
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=col)
    ax.set_ylabel("PSI vs the champion's data")
    time_axis(ax, [at for at, _ in measured])
    legend(ax)
    return '<div class="figs">' + rendered(fig, "PSI per column over nights") + "</div>"


def checks_section(root: Path, history: list[dict], spec: Pipeline) -> str:
    checked = [(night, row["checks"]) for night, row in entries(history, spec.name)
               if isinstance(row.get("checks"), Mapping)]
    held = nightly_file(root, "held", spec.name)
    if not checked and not held:
        return ""
    body = (held_block(held) + psi_plot(checked)
            + "".join(checks_block(night, checks) for night, checks in reversed(checked)))
    return section("Data checks", body, "checks")


def nightly_sections(root: Path, spec: Pipeline) -> str:
    history = nights(root)
    return (nightly_section(history, spec) + timeline_section(root, history, spec)
            + checks_section(root, history, spec))


# ---------------------------------------------------------------- the overview's champions
def current_span(spans: list[dict], version: str | None) -> dict | None:
    mine = [s for s in spans if version is not None and str(s.get("version")) == version]
    open_ = [s for s in mine if not s.get("until")]
    return (open_ or mine or [None])[-1]


def stale(last: tuple[dict, dict] | None, held: Mapping) -> str:
    """'no', or 'yes: ...' when the last night failed or was stopped, or rows are held."""
    word = outcome(last[1])[0] if last else ""
    why = {"failed": ["the last night failed"],
           "stopped": ["the last night was stopped by its data checks"]}.get(word, [])
    if held:
        why.append(f"{len(held.get('keys') or [])} row(s) held back by a failed check")
    return "yes: " + "; ".join(why) if why else "no"


def overview_row(root: Path, history: list[dict], spec: Pipeline) -> tuple[str, ...]:
    record = nightly_file(root, "champions", spec.name)
    champ = None if record.get("champion") is None else str(record["champion"])
    spans = spans_of(root, spec.name)
    span = current_span(spans, champ)
    records = entries(history, spec.name)
    nightly = [(n, r) for n, r in records if (n.get("by") or "nightly") != "person"]
    word, reason = outcome(records[-1][1]) if records else ("", "")
    by_hand = " (by hand)" if records and records[-1][0].get("by") == "person" else ""
    cells = (f"v{champ}" if champ else "none",
             duration(span["from"], as_of(history, spans)) if span else "",
             records[-1][0]["night"] if records else "never",
             f"{word}{by_hand}: {shorten(reason)}" if word else "",
             stale(nightly[-1] if nightly else None, nightly_file(root, "held", spec.name)))
    return (f'<a href="{spec.name}.html">{text(spec.name)}</a>', *map(text, cells))


def champions_section(root: Path, specs: list[Pipeline]) -> str:
    history = nights(root)
    rows = [overview_row(root, history, spec) for spec in specs]
    return section("Champions and the last night", table(
        ("pipeline", "champion", "age", "last record", "last verdict", "stale"),
        rows), "champions")


def plots_section(root: Path, spec: Pipeline) -> str:
    images = [p for stage in spec.stages for folder in stage.plots
              for p in sorted((root / folder).glob("*.png"))]
    if not images:
        return ""
    return section("Plots", '<div class="figs">' + "".join(image(p) for p in images) + "</div>",
                   "plots")


# ---------------------------------------------------------------- what one pipeline adds
def quora_variants(metrics: Mapping) -> str:
    rows = [(text(r["config"] + (" (headline)" if r["main"] else "")), text(r["vectors"]),
             num(r["accuracy"], f"table.{r['key']}.accuracy"), text(ci(r.get("accuracy_ci"))),
             num(r["f1"]), num(r["roc_auc"]), num(r["log_loss"])) for r in metrics["table"]]
    return section("Variants", table(("configuration", "vectors", "accuracy", "95% CI", "F1",
                                      "ROC-AUC", "log loss"), rows, {2, 4, 5, 6}), "variants")


def kinetics_variants(metrics: Mapping) -> str:
    models = [("BesNet, random dilation (headline)", "test", metrics.get("test")),
              (f"BesNet, fixed dilation {(metrics.get('besnet_fixed') or {}).get('dilation')}",
               "besnet_fixed", metrics.get("besnet_fixed")),
              ("frame model (per-frame ResNet + pooling + MLP)", "baselines.frame_model",
               (metrics.get("baselines") or {}).get("frame_model"))]
    rows = [(text(label), num(m["top1"], f"{key}.top1"), text(ci(m.get("top1_ci"))),
             num(m["top5"], f"{key}.top5"), num(m.get("mean_class_accuracy")))
            for label, key, m in models if m]
    body = table(("model", "Top-1", "95% CI", "Top-5", "mean class accuracy"), rows, {1, 3, 4})
    ablation = (metrics.get("ablation") or {}).get("dilation")
    if ablation:
        body += (f"<p>Random vs fixed dilation: difference "
                 f"{num(ablation['difference'], 'ablation.dilation.difference')} "
                 f"{text(ci(ablation['difference_ci']))}"
                 f"{'' if ablation['significant'] else ' — the interval includes 0'}.</p>")
    body += (f'<p class="mute">{text(metrics["clips"])} {text(metrics["test_split"])} clips, '
             f"{text(metrics['classes'])} classes, {text(metrics['views'])} views a clip.</p>")
    return section("Models", body, "variants")


def crypto_variants(metrics: Mapping) -> str:
    audit, reg, bt = metrics.get("leak_audit"), metrics["regression_illusion"], metrics["backtest"]
    parts = []
    if audit:
        parts.append(table(("recipe", "test accuracy", "majority", "leak check"), [
            (text(f"{name.replace('_', '-')}, horizon {audit['horizon']}"),
             num(audit[name]["accuracy"], f"leak_audit.{name}.accuracy"),
             num(audit[name]["majority"]), text(audit[name].get("leak_check", "passed")))
            for name in ("leaky", "leak_free")], {1, 2}))
    parts.append(f"<p>The price-regression illusion: R² {num(reg['regressor']['r2'], digits=4)} "
                 f"for the regressor vs {num(reg['persistence']['r2'], digits=4)} for copying "
                 f"the last price (skill over persistence "
                 f"{text(format(reg['skill_vs_persistence'], '+.4f'))}).</p>")
    parts.append(table(("backtest (long/flat)", "model", "buy and hold"), [
        (text(k.replace("_", " ")), num(bt[k], f"backtest.{k}"),
         num(bt[f"buy_and_hold_{k}"], f"backtest.buy_and_hold_{k}"))
        for k in ("total_return", "sharpe", "max_drawdown", "n_trades", "exposure")], {1, 2}))
    folds = metrics.get("walk_forward") or {}
    if folds.get("logistic_accuracy"):
        parts.append(f"<p>Walk-forward ({text(folds['folds'])} folds, logistic regression): "
                     f"{text(', '.join(fmt(a) for a in folds['logistic_accuracy']))}; mean "
                     f"{num(folds['mean'], 'walk_forward.mean')}.</p>")
    return section("Leak audit, regression illusion, backtest", "".join(parts), "variants")


VARIANTS: dict[str, Callable[[Mapping], str]] = {
    "crypto": crypto_variants, "quora": quora_variants, "kinetics": kinetics_variants}


def pipeline_page(root: Path, spec: Pipeline, specs: list[Pipeline]) -> str:
    metrics_path = root / spec.results_file
    if not metrics_path.exists():
        body = section("Not run yet", f"<p>No {text(spec.results_file)}: run "
                       f"<code>reprolab run {text(spec.name)}</code> or <code>dvc repro "
                       f"{text(spec.last.name)}</code>.</p>", "headline")
        body += nightly_sections(root, spec)
        return page(spec.title or spec.name, spec.name, specs, body)
    metrics = read_json(metrics_path)
    variants = VARIANTS.get(spec.name)
    body = "".join([
        headline_section(metrics, spec), references_section(metrics),
        variants(metrics) if variants else "", diagnosis_section(metrics),
        data_section(root, spec), ablations_section(root, spec), nightly_sections(root, spec),
        plots_section(root, spec)])
    return page(spec.title or spec.name, spec.name, specs, body)


def last_night_section(root: Path, specs: list[Pipeline]) -> str:
    latest = nights(root)[-1:]
    if not latest:
        return ""
    rows = [(text(spec.name), *row) for spec in specs for row in night_rows(latest, spec.name)]
    return section(f"Last night ({latest[0]['night']})",
                   table(("pipeline", *NIGHT_HEADERS), rows), "nightly")


def index_page(root: Path, specs: list[Pipeline]) -> str:
    cards = []
    for spec in specs:
        path = root / spec.results_file
        if not path.exists():
            cards.append(f'<section data-pipeline="{spec.name}"><h2><a href="{spec.name}.html">'
                         f"{text(spec.title)}</a></h2><p class=mute>not run yet</p></section>")
            continue
        metrics = read_json(path)
        value, interval = headline_value(metrics, spec)
        cards.append(f'<section data-pipeline="{spec.name}"><h2><a href="{spec.name}.html">'
                     f'{text(spec.title)}</a></h2><p><span class="big">{num(value, spec.headline)}</span> '
                     f'<span class="mute">{text(spec.headline)} {text(ci(interval))}</span></p>'
                     f"{verdict_line(metrics)}</section>")
    night = champions_section(root, specs) + last_night_section(root, specs)
    intro = ('<p class="mute">Built by the DVC stage <code>report</code> from the '
             "results, plots/ and reports/ of this checkout; every number is read from those files.</p>")
    return page("ReproLab results", "index", specs,
                intro + f'<div class="cards">{"".join(cards)}</div>' + night)


# ---------------------------------------------------------------- the stage
def build_site(root: Path, dest: Path) -> list[Path]:
    """Write index.html and one page per declared pipeline into `dest` (atomically: a reader
    never sees half a site)."""
    specs = declarations()
    with atomic_dir(dest) as tmp:
        (tmp / "index.html").write_text(index_page(root, specs), encoding="utf-8")
        for spec in specs:
            (tmp / f"{spec.name}.html").write_text(pipeline_page(root, spec, specs),
                                                   encoding="utf-8")
    pages = [dest / "index.html", *(dest / f"{s.name}.html" for s in specs)]
    get_logger().info("report site: %s (%d pages)", dest / "index.html", len(pages))
    return pages


def site_deps() -> tuple[str, ...]:
    """Everything the site reads: each pipeline's metrics, data reports and plot folders, and
    the ablation and nightly folders (kept in git with a README, so they always exist)."""
    paths: list[str] = []
    for spec in declarations():
        paths += [spec.results_file, *spec.data_reports,
                  *(folder for stage in spec.stages for folder in stage.plots)]
    return (*paths, str(ABLATIONS), str(NIGHTLY))


def report_stage(params: Any = None) -> dict:
    """report: reports/site from the results that exist."""
    return {"pages": [str(p) for p in build_site(Path("."), SITE)]}


STAGE = Stage("report", "tasks.site:report_stage",
              "the results site: reports/site/index.html and a page per pipeline",
              params=(), deps=site_deps(), outs=(str(SITE),), cli="flows.report build")

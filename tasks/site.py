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
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

# the declarations the pages are built from (imported by name, so they are code deps)
import tasks.crypto.pipeline
import tasks.quora.pipeline
import tasks.video.pipeline  # noqa: F401
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


def nights(root: Path) -> list[dict]:
    """Every recorded night, oldest first (reports/nightly/nights/*.json)."""
    folder = root / NIGHTLY / "nights"
    return [read_json(p) for p in sorted(folder.glob("*.json"))]


def night_rows(history: list[dict], pipeline: str) -> list[tuple[str, ...]]:
    rows = []
    for night in history:
        for row in night["pipelines"]:
            if row["pipeline"] != pipeline:
                continue
            if "error" in row:
                rows.append((text(night["night"]), "", "", "", "", text("failed: " + row["error"])))
                continue
            data, verdict = row["data"], row["verdict"]
            added = (f"+{data['bytes_added']} bytes, +{data['files_added']} files"
                     if data["changed"] else "none")
            rows.append((text(night["night"]), text(added),
                         text(", ".join(row["stages_run"]) or "none"),
                         text(f"{fmt(verdict['old'], 4)} → {fmt(verdict['new'], 4)}"),
                         text(fmt(verdict["promoted"])), text(verdict["reason"])))
    return rows


def nightly_section(root: Path, spec: Pipeline) -> str:
    rows = night_rows(nights(root), spec.name)
    if not rows:
        return ""
    return section("Nightly retraining", table(
        ("night", "data added", "stages rerun", "champion → challenger", "promoted", "why"),
        rows), "nightly")


def image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    caption = path.stem.replace("_", " ")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{text(caption)}">'
            f"<figcaption>{text(caption)}</figcaption></figure>")


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
        return page(spec.title or spec.name, spec.name, specs, body)
    metrics = read_json(metrics_path)
    variants = VARIANTS.get(spec.name)
    body = "".join([
        headline_section(metrics, spec), references_section(metrics),
        variants(metrics) if variants else "", diagnosis_section(metrics),
        data_section(root, spec), ablations_section(root, spec), nightly_section(root, spec),
        plots_section(root, spec)])
    return page(spec.title or spec.name, spec.name, specs, body)


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
    latest = nights(root)[-1:]
    night = ""
    if latest:
        rows = [r for spec in specs for r in night_rows(latest, spec.name)]
        night = section(f"Last night ({latest[0]['night']})", table(
            ("night", "data added", "stages rerun", "champion → challenger", "promoted", "why"),
            rows), "nightly")
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

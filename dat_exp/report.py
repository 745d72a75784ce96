"""``python -m dat_exp.report [EXPERIMENT | --sweep PARENT_RUN_ID] [--tracking-uri URI]
[--metric M] [--alpha A] [--target-delta D] [--pool-code-versions]``

Writes a Markdown and an HTML report (the per-variant table against the baseline, the failures,
the plots, the DAT diagnostics per epoch, a DAT sampling-point picture) into
``runs/reports/<name>/``, logs it to the sweep's parent run, and prints the table. Without
arguments: the latest sweep in ``runs/mlflow.db``.
"""

from __future__ import annotations

import argparse
import html
import re
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pandas as pd
from mlflow.exceptions import MlflowException

import dat_exp  # noqa: F401  (offline environment and layers, before Ultralytics loads)
from dat_exp.analysis import (
    Analysis,
    AnalysisError,
    RunSet,
    analyse,
    curves_figure,
    delta_heatmap,
    epoch_history,
    failures_table,
    latest_sweep,
    load_runs,
    planner,
    sampling_picture,
    save_png,
    table,
    tradeoff_figure,
)
from dat_exp.analysis.plots import diagnostics_figure
from dat_exp.analysis.stats import ALPHA, MEANINGS, Verdict, deterministic
from dat_exp.analysis.summary import (
    HELD_OUT_HEADLINE,
    OPTIMISTIC,
    check_options,
    level,
    racing_line,
    racing_notes,
    racing_table,
)
from dat_exp.env import runs_dir
from dat_exp.tracking import schema
from dat_exp.tracking.notes import markdown_table

HOW_TO_READ = (
    "Each row is one variant (every setting but the seed). n counts its distinct seeds: runs of "
    "one seed are averaged first and shown as repeats, never as more n. Its metrics are the mean "
    "over seeds ± the half-width of the Student-t 95% interval of that mean. Δ is the variant's "
    "mean minus its baseline's: its placement=none twin with exactly the same other settings "
    "(matched by the run's baseline tag, else its config.yaml), of the same code version, from "
    f"anywhere in the experiment. The headline metric is {HELD_OUT_HEADLINE} (the held-out "
    "split) when every run of every comparison has it, else the val split's, "
    f"{OPTIMISTIC}. Every comparison with a p-value is one family of size m (stated above); "
    "Bonferroni: p is Welch's two-sided p, p adj. = min(1, m p), and the Δ interval is "
    f"simultaneous at 1 − α/m, so a verdict is '{Verdict.BETTER}' or '{Verdict.WORSE}' exactly "
    "when p < α/m, which is when that interval excludes 0. The family depends on the report: "
    f"the same comparison can be '{Verdict.BETTER}' in a sweep's report and "
    f"'{Verdict.NOT_DISTINGUISHABLE}' in an experiment-wide one, "
    "with more comparisons. Verdicts: "
    + "; ".join(f"'{word}': {meaning}" for word, meaning in MEANINGS.items())
    + ". GFLOPs and params are compared exactly (Δ, ratio); latency and training time depend on "
    "the machine and get a verdict only when every run of the comparison ran on one device. "
    "The paired t-test's p is in variants.csv. Failed runs are listed apart and are in no mean; "
    "'superseded' means the same config later finished."
)
PLANNER_HOW_TO_READ = (
    "Before paying for more seeds: σ is the pooled within-variant SD of the metric over this "
    "report's variants (its df beside it); per comparison, the smallest Δ that its own test "
    f"(two-sided Welch at α/m) detects with {planner.POWER:.0%} power at its current seed "
    f"counts, found by simulating that test; 'none' when no Δ up to {planner.MAX_EFFECT:g}σ is "
    "detected. With --target-delta, the seeds per side that Δ needs (at most "
    f"{planner.CAP}). Plan at least 3 seeds."
)
FAILURE_COLUMNS = ["run_id", "variant", "seed", "status", "error", "superseded"]


@dataclass
class Report:
    directory: Path
    figures: dict[str, Path] = field(default_factory=dict)  # caption -> PNG
    notes: list[str] = field(default_factory=list)
    markdown: Path | None = None
    html: Path | None = None


# -- selection -----------------------------------------------------------------------------------
def select(
    experiment: str | None = None,
    sweep: str | None = None,
    tracking_uri: str | None = None,
    pool_code_versions: bool = False,
) -> RunSet:
    """The runs to report on: a sweep, an experiment, or (neither given) the latest sweep; per
    variant its newest code version's runs, or all of them pooled."""
    if sweep is None and experiment is None:
        sweep = latest_sweep(tracking_uri)
    return load_runs(
        experiment=experiment,
        sweep=sweep,
        tracking_uri=tracking_uri,
        pool_code_versions=pool_code_versions,
    )


def sampling_run(runs: pd.DataFrame, metric: str = schema.HEADLINE) -> str | None:
    """The DAT run with the best ``metric``: the one whose sampling points are pictured."""
    dat = runs[runs["placement"] != "none"]
    if dat.empty or metric not in dat:
        return None
    lowest_first = schema.spec(metric).higher_is_better is False
    return str(dat.sort_values(metric, ascending=lowest_first)["run_id"].iloc[0])


# -- figures -------------------------------------------------------------------------------------
def write_figures(analysis: Analysis, out: Path, sampling: bool = True) -> Report:
    """Every plot as a PNG in ``out`` (a skipped one leaves a note instead)."""
    report = Report(out)
    v, uri = analysis.variants, analysis.runset.tracking_uri
    m = analysis.metric
    report.figures[f"{m} vs exact GFLOPs"] = save_png(
        tradeoff_figure(v, schema.GFLOPS, m), out / "tradeoff_gflops.png"
    )
    report.figures[f"{m} vs latency"] = save_png(
        tradeoff_figure(v, schema.LATENCY_MS, m), out / "tradeoff_latency.png"
    )
    series = schema.val(m)
    history = epoch_history(analysis.runset.runs, series, uri)
    report.figures[f"{series} per epoch"] = save_png(
        curves_figure(history, series), out / "curves.png"
    )
    _add_diagnostics(report, analysis, out)  # beside the mAP curves
    heat, note = delta_heatmap(v, metric=m)
    if heat is not None:
        report.figures[f"Δ {m} heat map"] = save_png(heat, out / "delta_heatmap.png")
    if note:
        report.notes.append(note)
    if sampling:
        _add_sampling(report, analysis, out)
    return report


def dat_layers(runs: pd.DataFrame) -> dict[int, str]:
    """Layer -> pyramid level of every DAT module of ``runs`` (their ``module.{i}.layer`` and
    ``module.{i}.level`` params); ``""`` where the level is unknown."""
    found: dict[int, str] = {}
    for column in runs.columns:
        match = re.fullmatch(r"module\.(\d+)\.layer", str(column))
        if not match:
            continue
        levels = runs.get(f"module.{match[1]}.level", pd.Series(None, index=runs.index))
        for layer, name in zip(runs[column], levels, strict=True):
            if pd.notna(layer):
                found.setdefault(int(layer), str(name) if pd.notna(name) else "")
    return dict(sorted(found.items()))


def with_layer(runs: pd.DataFrame, layer: int) -> pd.DataFrame:
    """The runs with a DAT module at ``layer``."""
    columns = [c for c in runs.columns if re.fullmatch(r"module\.\d+\.layer", str(c))]
    has = pd.Series(False, index=runs.index)
    for column in columns:
        has |= (pd.to_numeric(runs[column], errors="coerce") == layer).fillna(False).astype(bool)
    return runs[has]


def diagnostic_histories(
    runs: pd.DataFrame, name: str, tracking_uri: str | None, layers: list[int]
) -> dict[int, pd.DataFrame]:
    """Layer -> per-epoch history of the DAT diagnostic ``name`` of the runs with that layer."""
    return {
        layer: epoch_history(
            with_layer(runs, layer), schema.dat_diagnostic(layer, name), tracking_uri
        )
        for layer in layers
    }


def _add_diagnostics(report: Report, analysis: Analysis, out: Path) -> None:
    """One figure per DAT diagnostic (a panel per module layer, a curve per variant); a note
    instead where no run logged it."""
    runs, uri = analysis.runset.runs, analysis.runset.tracking_uri
    layers = dat_layers(runs)
    if not layers:
        report.notes.append("DAT diagnostics: no DAT module in the selection")
        return
    missing = []
    for name in schema.DAT_DIAGNOSTICS:
        histories = diagnostic_histories(runs, name, uri, list(layers))
        if all(h.empty for h in histories.values()):
            missing.append(name)
            continue
        figure = diagnostics_figure(histories, name, layers)
        report.figures[f"DAT {name} per epoch"] = save_png(figure, out / f"dat_{name}.png")
    if len(missing) == len(schema.DAT_DIAGNOSTICS):
        report.notes.append(
            "DAT diagnostics skipped: no run logged a per-epoch "
            f"{schema.dat_diagnostic(next(iter(layers)), '…')} series (runs made before the "
            "diagnostics were logged, or no_off)"
        )
    elif missing:
        report.notes.append(f"DAT diagnostics not logged by any run: {', '.join(missing)}")


def _add_sampling(report: Report, analysis: Analysis, out: Path) -> None:
    run_id = sampling_run(analysis.runset.runs, analysis.metric)
    if run_id is None:
        report.notes.append("sampling points: no DAT run in the selection")
        return
    try:
        path = sampling_picture(run_id, analysis.runset.tracking_uri, out_dir=out)
    except AnalysisError as err:
        report.notes.append(f"sampling points skipped: {err}")
        return
    report.figures[f"DAT sampling points (run {run_id})"] = path
    report.notes.append(f"sampling points logged to run {run_id} as analysis/{path.name}")


# -- documents -----------------------------------------------------------------------------------
def title(runset: RunSet) -> str:
    what = (runset.sweep_name or f"sweep {runset.sweep_id}") if runset.sweep_id else "experiment"
    return f"DAT ablation: {what} ({runset.experiment})"


def header_lines(analysis: Analysis) -> list[str]:
    rs = analysis.runset
    sweep = f"; sweep run `{rs.sweep_id}`" if rs.sweep_id else ""
    return [
        f"Store `{rs.tracking_uri}`, experiment `{rs.experiment}`{sweep}.",
        f"{len(rs.runs)} finished runs in {len(analysis.variants)} variants; "
        f"{len(rs.failures)} not finished. Generated {datetime.now():%Y-%m-%d %H:%M}.",
        family_line(analysis),
    ]


def family_line(analysis: Analysis) -> str:
    """The family's size m and α (or why there is no family)."""
    m, alpha, metric = analysis.family_size, analysis.alpha, analysis.metric
    if deterministic(metric):
        return f"{metric} is deterministic: compared exactly (Δ and ratio), without verdicts."
    target = f", target delta ±{analysis.target_delta:g}" if analysis.target_delta else ""
    return (
        f"Verdicts on {metric}: one family of m = {m} comparison(s), α = {alpha:g} "
        f"(Bonferroni: p < α/m, intervals simultaneous at {level(alpha, m)}){target}."
    )


def racing_markdown(analysis: Analysis) -> list[str]:
    """The Racing section of a racing sweep (after the Variants section); none otherwise."""
    record = analysis.runset.racing
    if record is None:
        return []
    parts = ["## Racing", "", racing_line(record), ""]
    if not record.decisions.empty:
        parts += [markdown_table(racing_table(record)), ""]
    return parts + [f"- {note}" for note in racing_notes(record)] + [""]


def racing_html(analysis: Analysis) -> list[str]:
    record = analysis.runset.racing
    if record is None:
        return []
    body = ["<h2>Racing</h2>", f"<p>{html.escape(racing_line(record))}</p>"]
    if not record.decisions.empty:
        body.append(racing_table(record).to_html(index=False))
    return body + [f"<p>{html.escape(note)}</p>" for note in racing_notes(record)]


def render_markdown(analysis: Analysis, report: Report) -> str:
    parts = [f"# {title(analysis.runset)}", ""]
    for warning in analysis.warnings:
        parts += [f"> **{warning}**", ""]
    parts += header_lines(analysis) + ["", "## Variants", "", markdown_table(table(analysis))]
    parts += [""] + [f"- {note}" for note in analysis.notes] + ["", HOW_TO_READ, ""]
    parts += racing_markdown(analysis)
    if analysis.plan:
        parts += ["## Seed planner", "", PLANNER_HOW_TO_READ, ""]
        parts += [f"- {line}" for line in analysis.plan] + [""]
    parts += ["## Runs that did not finish", ""]
    failures = failures_table(analysis)[FAILURE_COLUMNS]
    parts.append(markdown_table(failures) if not failures.empty else "None.")
    parts += ["", "## Plots", ""]
    for caption, path in report.figures.items():
        parts += [f"### {caption}", "", f"![{caption}]({path.name})", ""]
    parts += [f"- {note}" for note in report.notes]
    return "\n".join(parts) + "\n"


def render_html(analysis: Analysis, report: Report) -> str:
    esc = html.escape
    body = [f"<h1>{esc(title(analysis.runset))}</h1>"]
    body += [f'<p class="warning">{esc(w)}</p>' for w in analysis.warnings]
    body += [f"<p>{esc(line.replace('`', ''))}</p>" for line in header_lines(analysis)]
    body += ["<h2>Variants</h2>", table(analysis).to_html(index=False), "<ul>"]
    body += [f"<li>{esc(note)}</li>" for note in analysis.notes] + ["</ul>"]
    body.append(f"<p>{esc(HOW_TO_READ)}</p>")
    body += racing_html(analysis)
    if analysis.plan:
        body += ["<h2>Seed planner</h2>", f"<p>{esc(PLANNER_HOW_TO_READ)}</p>", "<ul>"]
        body += [f"<li>{esc(line)}</li>" for line in analysis.plan] + ["</ul>"]
    failures = failures_table(analysis)[FAILURE_COLUMNS]
    body += [
        "<h2>Runs that did not finish</h2>",
        failures.to_html(index=False) if not failures.empty else "<p>None.</p>",
    ]
    body.append("<h2>Plots</h2>")
    for caption, path in report.figures.items():
        body += [f"<h3>{esc(caption)}</h3>", f'<img src="{esc(path.name)}" alt="{esc(caption)}">']
    body += ["<ul>"] + [f"<li>{esc(n)}</li>" for n in report.notes] + ["</ul>"]
    style = (
        "body{font-family:sans-serif;max-width:80em;margin:auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .5em}"
        ".warning{color:#fff;background:#c00;padding:.5em;font-weight:bold}"
        "img{max-width:100%}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>"
        f"{esc(title(analysis.runset))}</title><style>{style}</style></head><body>"
        + "\n".join(body)
        + "</body></html>\n"
    )


def build_report(analysis: Analysis, out: Path | None = None, sampling: bool = True) -> Report:
    """Figures, ``report.md``, ``report.html`` and the tables as CSV in ``out`` (default
    ``runs/reports/<name>/``)."""
    out = Path(out) if out else runs_dir() / "reports" / analysis.runset.name
    out.mkdir(parents=True, exist_ok=True)
    report = write_figures(analysis, out, sampling)
    analysis.variants.to_csv(out / "variants.csv", index=False)
    analysis.runset.runs.to_csv(out / "runs.csv", index=False)
    analysis.runset.failures.to_csv(out / "failures.csv", index=False)
    report.markdown = out / "report.md"
    report.markdown.write_text(render_markdown(analysis, report))
    report.html = out / "report.html"
    report.html.write_text(render_html(analysis, report))
    return report


def log_report(analysis: Analysis, report: Report) -> str | None:
    """Log the report folder to the sweep's parent run under ``report/``; None for an
    experiment (no parent run)."""
    if not analysis.runset.sweep_id:
        return None
    from mlflow import MlflowClient

    client = MlflowClient(analysis.runset.tracking_uri)
    client.log_artifacts(analysis.runset.sweep_id, str(report.directory), "report")
    return analysis.runset.sweep_id


# -- command line --------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m dat_exp.report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("experiment", nargs="?", help="an experiment name (all its runs)")
    parser.add_argument("--sweep", help="a sweep's parent run id")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: runs/mlflow.db)")
    parser.add_argument("--out", type=Path, help="report folder (default: runs/reports/<name>)")
    parser.add_argument("--no-sampling", action="store_true", help="no sampling-point picture")
    parser.add_argument("--no-log", action="store_true", help="do not log the report to MLflow")
    parser.add_argument(
        "--metric",
        help=f"the metric of the verdicts (default: {HELD_OUT_HEADLINE} when every compared run "
        f"has it, else {schema.HEADLINE})",
    )
    parser.add_argument(
        "--alpha", type=float, default=ALPHA, help="family-wise error rate (default: %(default)s)"
    )
    parser.add_argument(
        "--target-delta",
        type=float,
        help=f"|Δ| below which a comparison can be '{Verdict.EQUIVALENT}' (TOST); none by default",
    )
    parser.add_argument(
        "--pool-code-versions",
        action="store_true",
        help="pool the runs of every code version (default: each variant's newest only)",
    )
    args = parser.parse_args(argv)
    if args.experiment and args.sweep:
        parser.error("give an experiment or --sweep, not both")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        check_options(args.alpha, args.target_delta)  # before the store: a typo costs no load
        runset = select(args.experiment, args.sweep, args.tracking_uri, args.pool_code_versions)
        analysis = analyse(runset, args.metric, alpha=args.alpha, target_delta=args.target_delta)
        report = build_report(analysis, args.out, sampling=not args.no_sampling)
        logged = None if args.no_log else log_report(analysis, report)
    except AnalysisError as err:
        print(f"dat_exp.report: {err}", file=sys.stderr)
        return 2
    except MlflowException as err:  # an unreachable or unknown tracking store
        print(f"dat_exp.report: MLflow: {err.message}", file=sys.stderr)
        return 2
    print("\n".join(analysis.warnings + [""]) if analysis.warnings else "", end="")
    print(table(analysis).to_string(index=False))
    print("\n".join(["", *header_lines(analysis)[2:], *analysis.notes]))
    print("\n".join(["", *analysis.plan]) if analysis.plan else "", end="")
    print(f"\nreport: {report.markdown}\n        {report.html}")
    for note in report.notes:
        print(f"note: {note}")
    if logged:
        print(f"logged to run {logged} under report/")
    return 0


if __name__ == "__main__":
    sys.exit(main())

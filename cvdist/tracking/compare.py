"""Run comparison: load runs into one in-memory form, tabulate what differs, plot metrics.

Local run directories (``config.yaml`` + ``metrics.jsonl`` + ``summary.json``) and W&B runs
(:mod:`cvdist.tracking.wandb_source`) are both converted to :class:`RunData`; everything after
that boundary (filters, table, seed aggregation, plots) is the same code for both.
"""

from __future__ import annotations

import csv
import difflib
import glob
import io
import json
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import yaml

from cvdist.tracking.records import CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, _lower_is_better, read_metrics
from cvdist.tracking.terminal_table import render_table

DEFAULT_METRICS = ("eval/top1", "train/loss")
SEED_KEY = "train.seed"
# Keys that differ between any two runs without saying anything about the result.
IGNORED_KEYS = ("name", "output_dir", "checkpoint.resume", "tracking.wandb_mode")
LONGTAIL_METRICS = ("eval/many", "eval/medium", "eval/few")
NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


@dataclass
class RunData:
    """One run, whatever it was read from."""

    name: str
    config: dict[str, Any]
    """Flat config with dotted keys (``optim.lr``)."""
    rows: list[dict[str, Any]]
    """Metric rows in step order, each with an int ``step``."""
    final: dict[str, float] = field(default_factory=dict)
    best: dict[str, float] = field(default_factory=dict)
    source: str = ""
    """Where the run came from: a directory or ``wandb:entity/project/id``."""
    group: Optional[str] = None
    tags: list[str] = field(default_factory=list)

    def metric_names(self) -> set[str]:
        """Every metric this run logged or summarised."""
        names = set(self.final) | set(self.best)
        for row in self.rows:
            names.update(key for key in row if key not in ("step", "epoch"))
        return names


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts to one dict with dotted keys; lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_config(value, prefix=dotted + "."))
        else:
            flat[dotted] = value
    return flat


def summarize_rows(rows: Iterable[Mapping[str, Any]]) -> tuple[dict[str, float], dict[str, float]]:
    """Final and best value of every metric, with the same rule as ``RunRecord``."""
    final: dict[str, float] = {}
    best: dict[str, float] = {}
    for row in rows:
        for key, value in row.items():
            if key in ("step", "epoch") or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            final[key] = value
            if "/" in key and math.isfinite(value):
                better = min if _lower_is_better(key) else max
                best[key] = better(best.get(key, value), value)
    return final, best


def load_run_dir(run_dir: str | Path) -> RunData:
    """Read one cvdist run directory; raises FileNotFoundError naming a missing file."""
    run_dir = Path(run_dir)
    for needed in (CONFIG_FILE, METRICS_FILE):
        if not (run_dir / needed).is_file():
            raise FileNotFoundError(
                f"{run_dir} is not a run directory: it has no {needed} (a cvdist run directory holds "
                f"{CONFIG_FILE} and {METRICS_FILE}); pass a run directory such as runs/<name>, a directory "
                "whose sub-directories are runs, or a W&B project as entity/project")
    config = flatten_config(yaml.safe_load((run_dir / CONFIG_FILE).read_text()) or {})
    rows = sorted((row for row in read_metrics(run_dir) if isinstance(row.get("step"), int)),
                  key=lambda row: row["step"])
    final, best = summarize_rows(rows)
    summary_path = run_dir / SUMMARY_FILE
    if summary_path.is_file():  # a finished run: its summary is the authoritative record
        summary = json.loads(summary_path.read_text())
        final.update(summary.get("final", {}))
        best.update(summary.get("best", {}))
    tracking_group = config.get("tracking.group") or config.get("recipe")  # the session's default group
    return RunData(name=str(config.get("name") or run_dir.name), config=config, rows=rows, final=final,
                   best=best, source=str(run_dir), group=tracking_group,
                   tags=list(config.get("tracking.tags") or []))


def _is_run_dir(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file() and (path / METRICS_FILE).is_file()


def find_run_dirs(paths: Sequence[str | Path]) -> list[Path]:
    """Expand run directories, parents of run directories and glob patterns, in order."""
    found: list[Path] = []
    for raw in paths:
        text = str(raw)
        if any(char in text for char in "*?[") and not Path(text).exists():
            matches = [Path(match) for match in sorted(glob.glob(text)) if Path(match).is_dir()]
            if not matches:
                raise FileNotFoundError(f"the pattern {text!r} matches no directory; pass run directories")
        else:
            if not Path(text).exists():
                raise FileNotFoundError(f"{text} does not exist; pass run directories such as runs/<name>")
            matches = [Path(text)]
        for path in matches:
            if not path.is_dir():
                raise FileNotFoundError(f"{path} is a file; pass the run directory that holds it")
            children = sorted(child for child in path.iterdir() if child.is_dir() and _is_run_dir(child))
            # A directory that is not itself a run but holds runs is a parent (e.g. runs/).
            found.extend(children if not _is_run_dir(path) and children else [path])
    return list({path.resolve(): path for path in found}.values())  # the same run named twice counts once


def load_runs(paths: Sequence[str | Path]) -> list[RunData]:
    """Load every run named by ``paths`` (see :func:`find_run_dirs`)."""
    return [load_run_dir(path) for path in find_run_dirs(paths)]


def parse_filters(items: Sequence[str]) -> dict[str, Any]:
    """``["optim.lr=0.1"]`` -> ``{"optim.lr": 0.1}``; values are read as YAML (numbers, lists)."""
    filters = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"filter {item!r} is not of the form key=value (e.g. --filter optim.lr=0.1)")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = value
        # PyYAML reads 1e-3 as a string (YAML 1.1); a number is what the config holds.
        filters[key.strip()] = float(parsed) if isinstance(parsed, str) and NUMBER.match(parsed) else parsed
    return filters


def select_runs(runs: Sequence[RunData], *, config_filters: Mapping[str, Any] | None = None,
                group: Optional[str] = None, tags: Sequence[str] = ()) -> list[RunData]:
    """The runs matching every config value, the group and all the tags given."""
    config_filters = dict(config_filters or {})
    known = set().union(*(run.config for run in runs)) if runs else set()
    for key in config_filters:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"filter key {key!r} is in no run's config{hint}")

    def matches(run: RunData) -> bool:
        return (all(_same_value(run.config.get(key), value) for key, value in config_filters.items())
                and (group is None or run.group == group) and all(tag in run.tags for tag in tags))

    return [run for run in runs if matches(run)]


def _same_value(actual: Any, wanted: Any) -> bool:
    # Text equality as a fallback: a filter value "none" or "1.0" should match what the YAML holds.
    return actual == wanted or str(actual) == str(wanted)


@dataclass
class ComparisonRow:
    """One line of the table: a run, or the seeds of one configuration."""

    names: list[str]
    config: dict[str, Any]
    stats: dict[tuple[str, str], tuple[Optional[float], Optional[float]]]
    """``(metric, "final"|"best")`` -> (mean, sample std; None for n=1)."""


@dataclass
class ComparisonTable:
    """What differs between runs and their metrics, ready to print."""

    keys: list[str]
    metrics: list[str]
    rows: list[ComparisonRow]
    aggregated: bool
    """Some row averages repeated runs (seeds): show ``n``, and mean ± std on those rows."""

    def header(self) -> list[str]:
        """Column titles of the terminal and Markdown tables."""
        metric_columns = [f"{metric} {kind}" for metric in self.metrics for kind in ("final", "best")]
        return ["run", *self.keys, *(["n"] if self.aggregated else []), *metric_columns]


def differing_keys(runs: Sequence[RunData], *, ignore_keys: Iterable[str] = IGNORED_KEYS) -> list[str]:
    """Config keys whose value is not the same in every run that has the key.

    A key only some runs have (another recipe's section, e.g. ``kd.*`` of a distillation run
    next to long-tail runs) is shown only when those runs disagree on it: the ``recipe`` column
    already tells the recipes apart, and one column per option of every recipe would bury the
    keys that matter."""
    ignored = set(ignore_keys)
    keys = sorted(set().union(*(run.config for run in runs)) - ignored)
    return [key for key in keys
            if len({_hashable(run.config[key]) for run in runs if key in run.config}) > 1]


def _hashable(value: Any) -> Any:
    return json.dumps(value, sort_keys=True, default=str) if isinstance(value, (list, dict)) else value


def choose_metrics(runs: Sequence[RunData], metrics: Optional[Sequence[str]]) -> list[str]:
    """The metrics asked for (all must exist in some run), else the defaults that exist."""
    available = set().union(*(run.metric_names() for run in runs))
    if metrics:
        unknown = [metric for metric in metrics if metric not in available]
        if unknown:
            raise ValueError(f"no run has the metric(s) {', '.join(unknown)}; the runs have: "
                             f"{', '.join(sorted(available)) or 'no metrics at all'}")
        return list(metrics)
    chosen = [metric for metric in DEFAULT_METRICS if metric in available]
    if not chosen:
        raise ValueError(f"the runs have none of the default metrics {', '.join(DEFAULT_METRICS)}; choose some "
                         f"with --metrics from: {', '.join(sorted(available)) or 'no metrics at all'}")
    return chosen


def compare_runs(runs: Sequence[RunData], *, metrics: Optional[Sequence[str]] = None,
                 sort: Optional[str] = None, sort_by: str = "final", aggregate_seeds: bool = True,
                 ignore_keys: Iterable[str] = IGNORED_KEYS) -> ComparisonTable:
    """Tabulate ``runs``: differing config keys, then final / best of each metric, sorted.

    With ``aggregate_seeds``, runs whose differing config is equal apart from ``train.seed`` make one
    row with mean and sample std over the seeds. ``sort`` (default: the first metric) orders rows
    best first: descending unless the metric is loss-like.
    """
    if not runs:
        raise ValueError("no runs to compare; pass at least one run directory or a W&B project with runs")
    if sort_by not in ("final", "best"):
        raise ValueError(f"sort_by={sort_by!r} is not 'final' or 'best'")
    metrics = choose_metrics(runs, metrics)
    sort = sort or metrics[0]
    if sort not in metrics:
        metrics = [*metrics, *choose_metrics(runs, [sort])]
    keys = differing_keys(runs, ignore_keys=ignore_keys)
    if aggregate_seeds:
        keys = [key for key in keys if key != SEED_KEY]
    groups: dict[tuple, list[RunData]] = {}
    for run in runs:
        signature = tuple(_hashable(run.config.get(key)) for key in keys)
        groups.setdefault(signature if aggregate_seeds else (run.source, run.name), []).append(run)
    rows = [_aggregate(members, keys=keys, metrics=metrics) for members in groups.values()]
    direction = 1.0 if _lower_is_better(sort) else -1.0
    rows.sort(key=lambda row: (row.stats[(sort, sort_by)][0] is None,
                               direction * (row.stats[(sort, sort_by)][0] or 0.0)))
    repeated = aggregate_seeds and any(len(row.names) > 1 for row in rows)  # else "n" would be all 1s
    return ComparisonTable(keys=keys, metrics=metrics, rows=rows, aggregated=repeated)


def _aggregate(members: list[RunData], *, keys: list[str], metrics: list[str]) -> ComparisonRow:
    stats = {}
    for metric in metrics:
        for kind in ("final", "best"):
            values = [getattr(run, kind)[metric] for run in members if metric in getattr(run, kind)]
            mean = statistics.fmean(values) if values else None
            std = statistics.stdev(values) if len(values) > 1 else None
            stats[(metric, kind)] = (mean, std)
    return ComparisonRow(names=[run.name for run in members],
                         config={key: members[0].config.get(key) for key in keys}, stats=stats)


def format_value(value: Any) -> str:
    """A config value as table text (exact: 0.12345 stays 0.12345)."""
    if value is None:
        return "-"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def format_metric(value: Optional[float]) -> str:
    """A metric as table text, 4 significant digits ("-" when absent)."""
    return "-" if value is None else f"{value:.4g}"


def _cells(table: ComparisonTable, row: ComparisonRow) -> list[str]:
    cells = [", ".join(row.names), *(format_value(row.config[key]) for key in table.keys)]
    if table.aggregated:
        cells.append(str(len(row.names)))
    for metric in table.metrics:
        for kind in ("final", "best"):
            mean, std = row.stats[(metric, kind)]
            text = format_metric(mean)
            if std is not None:  # only rows that average repeated runs have a spread
                text += f" ± {format_metric(std)}"
            cells.append(text)
    return cells


def format_terminal(table: ComparisonTable, *, width: Optional[int] = None) -> str:
    """Aligned plain-text table fitted to ``width`` (default: the terminal's) by
    :func:`cvdist.tracking.terminal_table.render_table`."""
    return render_table(table.header(), [_cells(table, row) for row in table.rows], width=width)


def format_markdown(table: ComparisonTable) -> str:
    """GitHub-flavoured Markdown table."""
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    header = table.header()
    lines = [line(header), "| " + " | ".join("---" for _ in header) + " |"]
    lines.extend(line(_cells(table, row)) for row in table.rows)
    return "\n".join(lines) + "\n"


def format_csv(table: ComparisonTable) -> str:
    """CSV with numbers unformatted and the std in its own column (empty for a single run)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    metric_columns = [f"{metric} {kind}{suffix}" for metric in table.metrics for kind in ("final", "best")
                      for suffix in ("", " std")]
    writer.writerow(["run", *table.keys, "n", *metric_columns])
    for row in table.rows:
        values = [row.stats[(metric, kind)][i] for metric in table.metrics for kind in ("final", "best")
                  for i in (0, 1)]
        config = ["" if row.config[key] is None else format_value(row.config[key]) for key in table.keys]
        writer.writerow([";".join(row.names), *config, len(row.names),
                         *("" if value is None else repr(value) for value in values)])
    return buffer.getvalue()


# Longer legend entries squeeze the plot to nothing; the table has the keys anyway.
MAX_LABEL_CHARS = 60


def run_labels(runs: Sequence[RunData], *, ignore_keys: Iterable[str] = IGNORED_KEYS) -> dict[str, str]:
    """Legend text per run source: the name and its differing keys (seed included), or the
    name alone when that would be longer than ``MAX_LABEL_CHARS`` for any run."""
    keys = differing_keys(runs, ignore_keys=ignore_keys)
    labels = {run.source: run.name + (" (" + ", ".join(f"{key}={format_value(run.config.get(key))}"
                                                       for key in keys) + ")" if keys else "")
              for run in runs}
    if any(len(label) > MAX_LABEL_CHARS for label in labels.values()):
        return {run.source: run.name for run in runs}
    return labels


def _new_figure(width: float = 7.0, height: float = 4.5):
    from cvdist.plotting import new_figure

    return new_figure(width=width, height=height)


def plot_metric(runs: Sequence[RunData], *, metric: str, labels: Mapping[str, str], path: str | Path):
    """Write a PNG of ``metric`` over steps, one line per run that logged it; return the Figure."""
    figure = _new_figure()
    axes = figure.subplots()
    for run in runs:
        points = [(row["step"], row[metric]) for row in run.rows if isinstance(row.get(metric), (int, float))]
        if points:
            steps, values = zip(*points)
            axes.plot(steps, values, marker="." if len(points) < 30 else None, label=labels.get(run.source, run.name))
    axes.set_xlabel("step")
    axes.set_ylabel(metric)
    axes.set_title(metric)
    axes.grid(alpha=0.3)
    if axes.get_lines():
        axes.legend(fontsize="small")
    figure.savefig(path, dpi=100)
    return figure


def plot_longtail(runs: Sequence[RunData], *, labels: Mapping[str, str], path: str | Path):
    """Write grouped bars of final many / medium / few-shot accuracy per run; return the Figure."""
    runs = [run for run in runs if all(metric in run.final for metric in LONGTAIL_METRICS)]
    if not runs:
        raise ValueError(f"no run has all of {', '.join(LONGTAIL_METRICS)}; long-tail bars need them")
    figure = _new_figure(width=max(6.0, 1.6 * len(runs) + 2))
    axes = figure.subplots()
    width = 0.8 / len(LONGTAIL_METRICS)
    for offset, metric in enumerate(LONGTAIL_METRICS):
        positions = [index + (offset - 1) * width for index in range(len(runs))]
        axes.bar(positions, [run.final[metric] for run in runs], width=width, label=metric.split("/")[-1])
    axes.set_xticks(range(len(runs)), [labels.get(run.source, run.name) for run in runs],
                    rotation=20, ha="right", fontsize="small")
    axes.set_ylabel("final accuracy")
    axes.set_title("many / medium / few-shot accuracy")
    # Headroom above the tallest bar so the legend never hides a bar.
    axes.set_ylim(0, 1.15 * max(1.0, *(run.final[metric] for run in runs for metric in LONGTAIL_METRICS)))
    axes.legend(ncols=len(LONGTAIL_METRICS), loc="upper center")
    figure.savefig(path, dpi=100)
    return figure


def write_report(runs: Sequence[RunData], table: ComparisonTable, *, out_dir: str | Path) -> list[Path]:
    """Write table.md, table.csv, one PNG per metric and the long-tail bars; return the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "table.md", out_dir / "table.csv"]
    written[0].write_text(format_markdown(table))
    written[1].write_text(format_csv(table))
    labels = run_labels(runs)
    for metric in table.metrics:
        path = out_dir / (metric.replace("/", "_") + ".png")
        plot_metric(runs, metric=metric, labels=labels, path=path)
        written.append(path)
    if any(all(metric in run.final for metric in LONGTAIL_METRICS) for run in runs):
        written.append(out_dir / "longtail.png")
        plot_longtail(runs, labels=labels, path=written[-1])
    return written

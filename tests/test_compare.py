"""``cvdist compare``: fake run directories written the way cvdist writes them (no training)."""

from __future__ import annotations

import argparse
import csv
import io
import statistics

import pytest
from PIL import Image

from cvdist.commands.compare import add_compare_command
from cvdist.config import to_dict, to_yaml
from cvdist.config_loading import load_config
from cvdist.tracking import compare
from cvdist.tracking.records import RunRecord
from cvdist.tracking.wandb_source import build_wandb_filters, load_wandb_runs

# name -> (overrides, eval/top1 per eval, train/loss per log step)
RUNS = {
    "lr01-s0": (["optim.lr=0.1", "train.seed=0"], [0.5, 0.7, 0.8], [1.0, 0.6, 0.4]),
    "lr01-s1": (["optim.lr=0.1", "train.seed=1", "checkpoint.resume=none"], [0.6, 0.9, 0.85], [0.9, 0.5, 0.45]),
    "lr001-s0": (["optim.lr=0.01", "train.seed=0"], [0.3, 0.5, 0.6], [1.2, 1.0, 0.9]),
}


def metric_rows(top1, losses, longtail=None):
    """Rows shaped like the training loop's: train metrics and eval metrics share a step's row."""
    rows = []
    for index, (accuracy, loss) in enumerate(zip(top1, losses)):
        row = {"step": 10 * (index + 1), "epoch": 0, "train/loss": loss, "lr": 0.1 / (index + 1),
               "eval/top1": accuracy}
        if longtail:
            row.update({"eval/many": longtail[0], "eval/medium": longtail[1], "eval/few": longtail[2]})
        rows.append(row)
    return rows


def write_run(root, name, overrides, top1, losses, *, longtail=None, finish=True):
    config = load_config(overrides=[f"name={name}", f"output_dir={root}", *overrides])
    record = RunRecord(root / name, is_main=True)
    record.start(config_yaml=to_yaml(config), resumed_step=None)
    for row in metric_rows(top1, losses, longtail):
        record.log(row)
    if finish:
        record.write_summary({"step": 30, "total_steps": 30, "world_size": 1, "strategy": "ddp"})
    return root / name


@pytest.fixture
def run_root(tmp_path):
    root = tmp_path / "runs"
    for name, (overrides, top1, losses) in RUNS.items():
        write_run(root, name, overrides, top1, losses)
    return root


def test_table_has_differing_keys_and_seed_mean(run_root):
    runs = compare.load_runs([run_root])
    assert sorted(run.name for run in runs) == sorted(RUNS)
    table = compare.compare_runs(runs, metrics=None, sort="eval/top1")
    # name, output_dir and checkpoint.resume differ too but say nothing; train.seed is aggregated away.
    assert table.keys == ["optim.lr"]
    assert table.metrics == ["eval/top1", "train/loss"]
    first, second = table.rows
    assert first.config == {"optim.lr": 0.1} and sorted(first.names) == ["lr01-s0", "lr01-s1"]
    mean, std = first.stats[("eval/top1", "final")]
    assert mean == pytest.approx(0.825) and std == pytest.approx(statistics.stdev([0.8, 0.85]))
    assert first.stats[("eval/top1", "best")][0] == pytest.approx(0.85)
    assert first.stats[("train/loss", "best")][0] == pytest.approx(0.425)  # min, loss is lower-is-better
    assert second.config == {"optim.lr": 0.01} and second.names == ["lr001-s0"]
    assert second.stats[("eval/top1", "final")] == (pytest.approx(0.6), None)
    text = compare.format_terminal(table)
    assert "0.825 ± 0.03536" in text and "train.seed" not in text
    single_run_line = next(line for line in text.splitlines() if line.startswith("lr001-s0"))
    assert "0.6" in single_run_line and "±" not in single_run_line  # no spread without repeats


def test_sort_by_loss_is_ascending_and_seed_rows_without_mean(run_root):
    runs = compare.load_runs([run_root])
    table = compare.compare_runs(runs, metrics=["train/loss"], sort="train/loss", aggregate_seeds=False)
    assert table.keys == ["optim.lr", "train.seed"]
    assert [row.names[0] for row in table.rows] == ["lr01-s0", "lr01-s1", "lr001-s0"]
    by_eval = compare.compare_runs(runs, metrics=["train/loss"], sort="eval/top1", aggregate_seeds=False)
    assert by_eval.metrics == ["train/loss", "eval/top1"]  # the sort metric is shown too
    assert [row.names[0] for row in by_eval.rows] == ["lr01-s1", "lr01-s0", "lr001-s0"]


def test_markdown_and_csv(run_root):
    table = compare.compare_runs(compare.load_runs([run_root]), metrics=["eval/top1"])
    markdown = compare.format_markdown(table).splitlines()
    assert markdown[0] == "| run | optim.lr | n | eval/top1 final | eval/top1 best |"
    assert markdown[1] == "| --- | --- | --- | --- | --- |"
    assert markdown[2] == "| lr01-s0, lr01-s1 | 0.1 | 2 | 0.825 ± 0.03536 | 0.85 ± 0.07071 |"
    assert markdown[3] == "| lr001-s0 | 0.01 | 1 | 0.6 | 0.6 |"
    rows = list(csv.DictReader(io.StringIO(compare.format_csv(table))))
    assert [row["optim.lr"] for row in rows] == ["0.1", "0.01"]
    assert rows[0]["run"] == "lr01-s0;lr01-s1" and rows[0]["n"] == "2"
    assert float(rows[0]["eval/top1 final"]) == pytest.approx(0.825)
    assert float(rows[0]["eval/top1 final std"]) == pytest.approx(0.0353553, rel=1e-5)
    assert rows[1]["eval/top1 final std"] == ""


def test_report_plots_one_line_per_run(run_root, tmp_path):
    runs = compare.load_runs([run_root])
    table = compare.compare_runs(runs, metrics=["eval/top1", "train/loss"])
    written = compare.write_report(runs, table, out_dir=tmp_path / "out")
    assert sorted(path.name for path in written) == ["eval_top1.png", "table.csv", "table.md", "train_loss.png"]
    assert (tmp_path / "out" / "table.md").read_text() == compare.format_markdown(table)
    for path in written[2:]:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size[0] > 100
    labels = compare.run_labels(runs)
    figure = compare.plot_metric(runs, metric="eval/top1", labels=labels, path=tmp_path / "top1.png")
    lines = figure.axes[0].get_lines()
    assert len(lines) == 3
    legend = sorted(text.get_text() for text in figure.axes[0].get_legend().get_texts())
    assert legend[0] == "lr001-s0 (optim.lr=0.01, train.seed=0)"
    assert list(lines[0].get_xdata()) == [10, 20, 30]


def test_longtail_bars(tmp_path):
    root = tmp_path / "runs"
    write_run(root, "ce", ["optim.lr=0.1"], [0.5], [1.0], longtail=(0.9, 0.6, 0.2))
    write_run(root, "balanced", ["optim.lr=0.1", "data.sampling=class_balanced"], [0.55], [1.1],
              longtail=(0.8, 0.65, 0.4))
    runs = compare.load_runs([root])
    figure = compare.plot_longtail(runs, labels=compare.run_labels(runs), path=tmp_path / "bars.png")
    containers = figure.axes[0].containers
    assert len(containers) == 3 and all(len(bars) == 2 for bars in containers)
    assert sorted(bar.get_height() for bar in containers[2]) == [0.2, 0.4]  # few-shot of each run
    table = compare.compare_runs(runs, metrics=["eval/few"])
    assert table.keys == ["data.sampling"]
    written = compare.write_report(runs, table, out_dir=tmp_path / "out")
    assert (tmp_path / "out" / "longtail.png") in written
    with Image.open(tmp_path / "out" / "longtail.png") as image:
        assert image.format == "PNG"


def test_unfinished_run_uses_metrics_and_globs(tmp_path):
    root = tmp_path / "runs"
    write_run(root, "a", ["optim.lr=0.1"], [0.5, 0.4], [1.0, 0.7], finish=False)
    write_run(root, "b", ["optim.lr=0.2"], [0.6], [0.9])
    runs = compare.load_runs([str(root / "*")])
    assert [run.name for run in runs] == ["a", "b"]
    assert runs[0].final["eval/top1"] == 0.4 and runs[0].best["eval/top1"] == 0.5


def test_local_filters(run_root):
    runs = compare.load_runs([run_root])
    chosen = compare.select_runs(runs, config_filters=compare.parse_filters(["optim.lr=0.01"]))
    assert [run.name for run in chosen] == ["lr001-s0"]
    assert compare.parse_filters(["optim.lr=1e-2", "data.mean=[0.5]"]) == {"optim.lr": 0.01, "data.mean": [0.5]}
    assert len(compare.select_runs(runs, group="supervised")) == 3  # group defaults to the recipe
    assert compare.select_runs(runs, tags=["x"]) == []
    with pytest.raises(ValueError, match="did you mean optim.lr"):
        compare.select_runs(runs, config_filters={"optim.lrr": 0.1})
    with pytest.raises(ValueError, match="key=value"):
        compare.parse_filters(["optim.lr"])


def test_errors_name_the_problem(run_root, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no config.yaml"):
        compare.load_runs([tmp_path / "empty"])
    (run_root / "lr01-s0" / "metrics.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="has no metrics.jsonl"):
        compare.load_run_dir(run_root / "lr01-s0")
    with pytest.raises(FileNotFoundError, match="is a file"):
        compare.load_runs([run_root / "lr01-s1" / "config.yaml"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        compare.load_runs([tmp_path / "nope"])
    with pytest.raises(FileNotFoundError, match="matches no directory"):
        compare.load_runs([str(tmp_path / "nope-*")])
    runs = compare.load_runs([run_root])  # the broken run is no longer a run: skipped in a parent
    with pytest.raises(ValueError, match=r"no run has the metric\(s\) eval/top5; the runs have: .*eval/top1"):
        compare.compare_runs(runs, metrics=["eval/top5"])
    with pytest.raises(ValueError, match="no runs to compare"):
        compare.compare_runs([], metrics=None)


class FakeWandbRun:
    """The attributes of ``wandb.apis.public.Run`` that the converter reads."""

    def __init__(self, name, overrides, top1, losses, *, run_id):
        self.name, self.id, self.group, self.tags = name, run_id, "supervised", ["sweep"]
        config = load_config(overrides=[f"name={name}", *overrides])
        self.config = {**to_dict(config), "_wandb": {"cli_version": "0.31.0"}}
        self._rows = [{"_step": row.pop("step"), "_runtime": 1.0, **row} for row in metric_rows(top1, losses)]
        last = self._rows[-1]
        self.summary = {"_step": last["_step"], "eval/top1": last["eval/top1"],
                        **{f"final/{k}": v for k, v in last.items() if not k.startswith("_")}}
        self.calls = []

    def history(self, samples=500, pandas=True):
        self.calls.append("history")
        assert pandas is False
        return [dict(row) for row in self._rows]

    def scan_history(self):
        self.calls.append("scan_history")
        return iter(dict(row) for row in self._rows)


class FakeApi:
    def __init__(self, runs=(), error=None):
        self._runs, self.error, self.queries = list(runs), error, []

    def runs(self, path, filters=None):
        self.queries.append((path, filters))
        if self.error:
            raise self.error
        return iter(self._runs)


def fake_project():
    return [FakeWandbRun(name, overrides, top1, losses, run_id=f"id{index}")
            for index, (name, (overrides, top1, losses)) in enumerate(RUNS.items())]


def test_wandb_runs_become_the_same_table(run_root, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    api = FakeApi(fake_project())
    runs = load_wandb_runs("team/cvdist", api=api, group="supervised", tags=["sweep"])
    assert api.queries == [("team/cvdist", {"$and": [{"group": "supervised"}, {"tags": {"$in": ["sweep"]}}]})]
    assert runs[0].source == "wandb:team/cvdist/id0" and runs[0].config["optim.lr"] == 0.1
    assert "_wandb.cli_version" not in runs[0].config and runs[0].rows[0] == {
        "step": 10, "epoch": 0, "train/loss": 1.0, "lr": 0.1, "eval/top1": 0.5}
    local = compare.compare_runs(compare.load_runs([run_root]), metrics=None)
    remote = compare.compare_runs(runs, metrics=None)
    assert remote.keys == local.keys == ["optim.lr"]
    assert [(row.names, row.config, row.stats) for row in remote.rows] == \
           [(row.names, row.config, row.stats) for row in local.rows]


def test_wandb_filters_and_sampled_history(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert build_wandb_filters(config_filters={"optim.lr": 0.1}) == {"config.optim.lr": 0.1}
    project = fake_project()
    # The fake server ignores filters; the client-side check must still keep only lr=0.01.
    runs = load_wandb_runs("team/cvdist", api=FakeApi(project), config_filters={"optim.lr": 0.01}, sampled=True)
    assert [run.name for run in runs] == ["lr001-s0"] and project[0].calls == ["history"]
    with pytest.raises(ValueError, match="has no runs matching"):
        load_wandb_runs("team/cvdist", api=FakeApi([]))
    with pytest.raises(ValueError, match="entity/project"):
        load_wandb_runs("not-a-project", api=FakeApi(project))


def test_wandb_offline_and_network_errors(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    with pytest.raises(ValueError, match="WANDB_MODE=offline.*needs network.*wandb sync"):
        load_wandb_runs("team/cvdist")
    monkeypatch.delenv("WANDB_MODE")
    api = FakeApi(error=ConnectionError("Max retries exceeded with url: /graphql"))
    with pytest.raises(ValueError, match="ConnectionError.*needs network.*local run directories"):
        load_wandb_runs("team/cvdist", api=api)


def parse_cli(argv):
    parser = argparse.ArgumentParser(prog="cvdist")
    add_compare_command(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["compare", *argv])


def test_cli_writes_report_and_prints_table(run_root, tmp_path, capsys):
    out = tmp_path / "report"
    args = parse_cli([str(run_root / "lr01-s0"), str(run_root / "lr001-s0"), "--metrics", "eval/top1",
                      "--out", str(out), "--no-seed-mean"])
    assert args.handler(args) == 0
    printed = capsys.readouterr().out
    # Both runs have seed 0, so train.seed is not a differing key even without the seed mean.
    assert printed.splitlines()[0].split() == ["run", "optim.lr", "eval/top1", "final", "eval/top1", "best"]
    assert printed.splitlines()[2].split() == ["lr01-s0", "0.1", "0.8", "0.8"]
    assert f"wrote {out / 'eval_top1.png'}" in printed
    assert sorted(path.name for path in out.iterdir()) == ["eval_top1.png", "table.csv", "table.md"]


def test_cli_errors(run_root, tmp_path, monkeypatch):
    args = parse_cli([str(run_root), "--filter", "optim.lr=0.5", "--out", str(tmp_path / "o")])
    with pytest.raises(ValueError, match="no run in .* matches the filters"):
        args.handler(args)
    monkeypatch.setenv("WANDB_MODE", "offline")
    args = parse_cli(["runs/typo", "--out", str(tmp_path / "o")])  # not a directory: read as a W&B project
    with pytest.raises(ValueError, match="runs/typo is not a local directory.*wandb sync"):
        args.handler(args)


def test_cvdist_main_exits_2_on_user_error(tmp_path, capsys):
    from cvdist import cli

    assert cli.main(["compare", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.startswith(f"cvdist: error: {tmp_path} is not a run directory")


def test_keys_of_one_recipe_only_are_left_out_unless_they_differ():
    from cvdist.tracking.compare import RunData, differing_keys

    def run(name, config):
        return RunData(name=name, config=config, rows=[], source=name)

    runs = [run("a", {"recipe": "longtail", "loss.name": "ce", "longtail.stage": "joint"}),
            run("b", {"recipe": "longtail", "loss.name": "ldam", "longtail.stage": "joint"}),
            run("c", {"recipe": "distill", "loss.name": "ce", "kd.alpha": 0.9})]
    assert differing_keys(runs, ignore_keys=()) == ["loss.name", "recipe"]
    runs.append(run("d", {"recipe": "distill", "loss.name": "ce", "kd.alpha": 0.5}))
    assert differing_keys(runs, ignore_keys=()) == ["kd.alpha", "loss.name", "recipe"]


def test_long_legend_labels_fall_back_to_run_names():
    from cvdist.tracking.compare import MAX_LABEL_CHARS, RunData, run_labels

    long_path = "/some/where/" + "x" * MAX_LABEL_CHARS
    runs = [RunData(name="a", config={"transfer.from_path": long_path}, rows=[], source="a"),
            RunData(name="b", config={"transfer.from_path": ""}, rows=[], source="b")]
    assert run_labels(runs, ignore_keys=()) == {"a": "a", "b": "b"}
    runs[0].config["transfer.from_path"] = "p"
    assert run_labels(runs, ignore_keys=()) == {"a": "a (transfer.from_path=p)", "b": "b (transfer.from_path=)"}

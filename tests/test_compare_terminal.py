"""``cvdist compare``'s terminal table fits the terminal: blocks of columns that each repeat the run
column, long cells cut, ``n`` and ``± std`` only where runs were repeated."""

from __future__ import annotations

import string

from hypothesis import given, settings
from hypothesis import strategies as st

from cvdist.tracking import compare
from cvdist.tracking.terminal_table import render_table


def _run(name: str, config: dict, top1: float, loss: float) -> compare.RunData:
    return compare.RunData(source=name, name=name, config=config, final={"eval/top1": top1, "train/loss": loss},
                           best={"eval/top1": top1, "train/loss": loss}, rows=[])


def _wide_runs() -> list[compare.RunData]:
    keys = {f"longtail.option_{i}": i for i in range(8)}
    return [_run(f"run-{i}", {**keys, "longtail.option_0": i, "optim.lr": 0.1 * (i + 1), "train.seed": 0,
                               "model.name": "a" * 50 + str(i)}, 0.5 + i / 10, 1.0 - i / 10) for i in range(3)]


def test_a_wide_table_is_split_into_blocks_that_fit_and_repeat_the_run_column():
    table = compare.compare_runs(_wide_runs())
    assert not table.aggregated  # no repeated configuration: no "n" column and no "±"
    text = compare.format_terminal(table, width=70)
    assert "±" not in text and " n " not in text.splitlines()[0] + " "
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 70
    blocks = text.strip("\n").split("\n\n")
    assert len(blocks) >= 2
    for block in blocks:
        rows = block.splitlines()
        assert rows[0].startswith("run") and set(rows[1].replace(" ", "")) == {"-"}
        assert [row.split()[0] for row in rows[2:]] == ["run-2", "run-1", "run-0"]  # sorted by eval/top1
    assert "a" * 31 + "…" in text and "a" * 33 not in text  # the 51-character model name is cut
    assert "eval/top1 final" in text and "train/loss best" in text


def test_repeated_runs_alone_show_n_and_spread():
    runs = [_run("s0", {"optim.lr": 0.1, "train.seed": 0}, 0.8, 1.0),
            _run("s1", {"optim.lr": 0.1, "train.seed": 1}, 0.9, 1.0),
            _run("other", {"optim.lr": 0.2, "train.seed": 0}, 0.5, 1.0)]
    text = compare.format_terminal(compare.compare_runs(runs, metrics=["eval/top1"]), width=200)
    header, _, repeated, single = text.splitlines()
    assert header.split()[:3] == ["run", "optim.lr", "n"]
    assert "0.85 ± 0.07071" in repeated and repeated.split()[3] == "2"
    assert "±" not in single and single.split()[2] == "1"


cells = st.text(alphabet=string.ascii_letters + string.digits + "./-", min_size=1, max_size=60)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), num_columns=st.integers(min_value=1, max_value=12), width=st.integers(min_value=66,
                                                                                             max_value=200))
def test_any_table_fits_and_keeps_every_cell(data, num_columns, width):
    header = [f"c{i}" for i in range(num_columns)]
    rows = data.draw(st.lists(st.lists(cells, min_size=num_columns, max_size=num_columns), min_size=1, max_size=5))
    text = render_table(header, rows, width=width)
    blocks = [block.splitlines() for block in text.strip("\n").split("\n\n")]
    assert all(len(line) <= width for line in text.splitlines())  # cells are cut to 32: two always fit 66
    shown = [name for block in blocks for name in block[0].split()[1:]]
    assert shown == header[1:]  # every column once, in order, after the repeated first one
    for block in blocks:
        assert [line.split()[0] for line in block[2:]] == [row[0][:31] if len(row[0]) > 32 else row[0]
                                                            for row in rows]

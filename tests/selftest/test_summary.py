"""Summary JSON files read without pytest: shards merged into one report, the worst-ratio table."""

from __future__ import annotations

import json

import pytest

from gemma2_regress import cli
from gemma2_regress.plugins import summary


def shard(tmp_path, name: str, outcome: str, ratio: float) -> str:
    rec = {
        "property": "kernel_matches_oracle",
        "target": "k[eval]",
        "verdict": "ok",
        "ratio": ratio,
        "case": name,
    }
    data = {
        "versions": {"unsloth": "2026.10.9"},
        "exit_status": 0 if outcome == "passed" else 1,
        "wall_s": 10.0,
        "tests": {
            f"tests/kernel/test_k.py::test_{name}": {"outcome": outcome, "duration_s": 1.0, "verdicts": []}
        },
        "properties": [],
        "records": [rec],
    }
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_shards_merge_into_one_report(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = shard(tmp_path, "a", "passed", 0.2), shard(tmp_path, "b", "failed", 0.7)
    merged = summary.merge([summary.load(a), summary.load(b)])
    (row,) = merged["properties"]
    assert (row["examples"], row["worst_ratio"], row["worst_case"]) == (2, 0.7, "b")
    assert merged["exit_status"] == 1 and merged["shards"] == 2 and len(merged["tests"]) == 2
    out = tmp_path / "merged.json"
    assert cli.main(["report", a, b, "--markdown", "--out", str(out)]) == 1  # a test failed in a shard
    text = capsys.readouterr().out
    assert (
        "| kernel_matches_oracle | `k[eval]` | 2 | 0 | 0 | 0.7 | `b` |" in text
        and "failed: tests/kernel" in text
    )
    assert json.loads(out.read_text())["shards"] == 2
    assert cli.main(["report", a]) == 0


def test_merged_shards_leave_an_unreported_test_of_an_interrupted_shard_unjudged(tmp_path) -> None:
    a = summary.load(shard(tmp_path, "a", "passed", 0.2))
    b = summary.load(shard(tmp_path, "b", "passed", 0.7))
    a["records"][0]["test"] = "tests/kernel/test_k.py::test_a"  # reported (passed) in shard a
    b["records"][0].update(
        verdict="crash:RuntimeError", ratio=float("inf"), test="tests/kernel/test_k.py::test_c"
    )
    (row,) = summary.merge([a, b])["properties"]
    assert (row["bad"], row["interrupted"]) == (1, 0)  # neither shard interrupted: the crash is bad
    b["exit_status"] = summary.INTERRUPTED
    (row,) = summary.merge([a, b])["properties"]
    assert (row["bad"], row["interrupted"], row["worst_ratio"]) == (0, 1, 0.2)


def test_a_wrong_file_is_one_line(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "x.json").write_text('{"hello": 1}')
    assert cli.main(["report", str(tmp_path / "x.json")]) == 2
    assert cli.main(["report", str(tmp_path / "missing.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "not a gemma2-regress summary" in err[0] and "no such file" in err[1]


def test_an_interrupted_example_is_not_a_failure() -> None:
    """An example cut short by the time bound's SIGINT was never judged: counted apart, said apart."""
    recs = [
        {"property": "p", "target": "t", "verdict": "ok", "ratio": 0.5, "case": "a"},
        {"property": "p", "target": "t", "verdict": "interrupted", "ratio": float("nan"), "case": "b"},
        {"property": "p", "target": "t", "verdict": "mismatch", "ratio": 2.0, "case": "c"},
    ]
    (row,) = summary.worst_by_property(recs)
    assert (row["examples"], row["bad"], row["interrupted"], row["worst_ratio"]) == (3, 1, 1, 2.0)
    assert any(
        line.startswith("interrupted (cut short") and "p t 1" in line for line in summary.table_lines([row])
    )


@pytest.mark.parametrize(
    ("fields", "want"),
    [
        ({"exit_status": 0, "narrowed": []}, True),
        ({"exit_status": 1, "narrowed": []}, False),  # a red run: the next run is not called warm
        ({"exit_status": 2, "narrowed": []}, False),  # cut by a time bound
        ({"exit_status": 0, "narrowed": ["-k 'window'"]}, False),  # part of the tier
        ({"exit_status": 0}, False),  # written before the field existed: not known to be whole
    ],
)
def test_whole_tier_passed_only_for_a_whole_green_run(tmp_path, fields: dict, want: bool) -> None:
    path = tmp_path / "summary.json"
    path.write_text(json.dumps({"tests": {}, "records": [], **fields}))
    assert summary.whole_tier_passed(path) is want
    assert summary.whole_tier_passed(tmp_path / "missing.json") is False

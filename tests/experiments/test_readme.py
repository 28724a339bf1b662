"""``matopt readme``: the README's result tables regenerated from committed results.json files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from matopt import cli
from matopt.experiments import metrics, readme

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = "docs/quickstart/results.json"


def _put(record: dict, key: str, values: list) -> None:
  """``record[key]`` and its summary as report.py writes them."""
  summary = metrics.summarize(values)
  record[key] = summary.mean if summary.n else None
  record.setdefault("summaries", {})[key] = summary._asdict()


def _speedups(record: dict, key: str, speedups: list[metrics.Speedup]) -> None:
  summary = metrics.summarize_speedups(speedups)
  record[key] = summary.summary.mean if summary.summary.n else None
  record["summaries"][key] = {**summary._asdict(), "summary": summary.summary._asdict()}
  for run, speedup in zip(record["runs"], speedups):
    run[key] = speedup._asdict()


def _record(
  name: str,
  lr: float,
  losses: list,
  steps_to: list,
  data: list,
  time: list,
  *,
  tuned: dict | None = None,
  grid: int = 1,
) -> dict:
  """A 2-seed record against the baseline adamw, shaped as ``matopt run`` writes one."""
  record = {"optimizer": name, "factory": name, "learning_rate": lr}
  _put(record, "final_val_loss", losses)
  record["steps"] = 100
  _put(record, "throughput", [5.0e4, 5.2e4])
  record["throughput_unit"] = "tokens/s"
  record["diverged"] = any(v is None for v in losses)
  record["diverged_seeds"] = sum(v is None for v in losses)
  if tuned:
    record["tuned"] = tuned
  record["grid"] = [{"learning_rate": lr * 2**i} for i in range(grid)]
  record["seeds"], record["n_seeds"] = [0, 1], 2
  record["runs"] = [{"seed": s, "final_val_loss": v, "steps_to_target": t} for s, v, t in zip([0, 1], losses, steps_to)]
  record["baseline"], record["target_val_loss"] = "adamw", 3.0
  _put(record, "steps_to_target", steps_to)
  _speedups(record, "data_speedup", data)
  _speedups(record, "time_speedup", time)
  return record


def _multi_seed_records() -> list[dict]:
  s = metrics.Speedup
  adamw = _record(
    "adamw", 0.01, [3.01, 2.99], [100.0, 98.0], [s(1.0), s(1.0)], [s(1.0), s(1.0)], tuned={"b2": 0.95}, grid=4
  )
  adamw["horizons"] = [{"steps": 200}, {"steps": 400}]
  muon = _record("muon", 0.02, [2.70, 2.74], [61.0, 65.0], [s(2.5), s(4.0, ">")], [s(1.8), s(1.6)])
  nsgd = _record("nsgd", 0.3, [3.2, None], [None, None], [s(1.0, "<"), s(1.0, "<")], [s(0.9, "<"), s(0.8, "<")])
  return [adamw, nsgd, muon]  # the config's order; the table sorts by loss


def _write_results(directory: Path, records: list[dict], *, loss_unit: str | None = "nats/byte") -> None:
  directory.mkdir(parents=True, exist_ok=True)
  (directory / "results.json").write_text(json.dumps(records, indent=1))
  if loss_unit:
    (directory / "meta.json").write_text(json.dumps({"unit": "tokens", "loss_unit": loss_unit}))


def _markdown(*paths: str) -> str:
  blocks = "".join(
    f"Table {i}:\n\n<!-- matopt:table {p} -->\nstale text\n<!-- /matopt:table -->\n\n" for i, p in enumerate(paths)
  )
  example = "```markdown\n<!-- matopt:table not/a/file.json -->\n```\n"
  return f"# Title\n\nProse before, kept as is.\n\n{blocks}{example}\nProse after.   \nLast line without newline"


@pytest.fixture
def copied_readme(tmp_path: Path) -> Path:
  """The committed README and the results it names, in tmp_path at the same relative paths."""
  for block in readme.blocks((REPO / "README.md").read_text(), source=REPO / "README.md"):
    target = tmp_path / block.marked
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(block.results, target)
    if (block.results.parent / "meta.json").is_file():  # the caption's loss unit
      shutil.copy(block.results.parent / "meta.json", target.parent / "meta.json")
  shutil.copy(REPO / "README.md", tmp_path / "README.md")
  return tmp_path / "README.md"


def test_committed_readme_tables_agree_with_committed_results():
  found = readme.blocks((REPO / "README.md").read_text(), source=REPO / "README.md")
  assert QUICKSTART in [b.marked for b in found]
  stale = [f"README.md:{b.line} ({b.marked})\n{readme.diff(b)}" for b in found if b.stale]
  # The recorded studies' pages too.
  for page in sorted((REPO / "docs").glob("*/README.md")):
    name = page.relative_to(REPO)
    stale += [
      f"{name}:{b.line} ({b.marked})\n{readme.diff(b)}" for b in readme.blocks(page.read_text(), source=page) if b.stale
    ]
  assert not stale, "Regenerate with `matopt readme FILE`:\n" + "\n".join(stale)


def test_check_fails_when_results_or_table_are_edited_by_hand(copied_readme, capsys):
  assert cli.main(["readme", "--check", str(copied_readme)]) == 0
  results = copied_readme.parent / QUICKSTART
  committed_results, committed_readme = results.read_text(), copied_readme.read_text()
  # A result edited (or re-run) without regenerating the table.
  records = json.loads(committed_results)
  records[0]["final_val_loss"] += 0.01
  results.write_text(json.dumps(records))
  capsys.readouterr()
  assert cli.main(["readme", "--check", str(copied_readme)]) == 1
  out, err = capsys.readouterr()
  assert f"{copied_readme}:" in err and f"table from {QUICKSTART} is stale" in err
  assert out.startswith("---") and f"{records[0]['final_val_loss']:.4g}" in out
  assert copied_readme.read_text() == committed_readme  # --check writes nothing
  # The table edited by hand, the results as committed.
  results.write_text(committed_results)
  row = next(line for line in committed_readme.splitlines() if line.startswith("| muon |"))
  copied_readme.write_text(committed_readme.replace(row, row.replace("| muon |", "| muon (tuned) |")))
  assert cli.main(["readme", "--check", str(copied_readme)]) == 1
  # Regenerating restores the committed text exactly.
  assert cli.main(["readme", str(copied_readme)]) == 0
  assert copied_readme.read_text() == committed_readme


def test_regeneration_is_idempotent_and_keeps_the_text_outside_the_markers(tmp_path):
  _write_results(tmp_path / "a", _multi_seed_records())
  _write_results(tmp_path / "b", _multi_seed_records()[:1], loss_unit=None)
  path = tmp_path / "doc.md"
  path.write_text(_markdown("a/results.json", "b/results.json"))
  found = readme.update(path)
  assert [b.line for b in found] == [7, 13] and all(b.stale for b in found)
  first = path.read_text()
  assert "stale text" not in first
  # Outside the blocks and the markers themselves: the same text, in order.
  outside = _markdown("a/results.json", "b/results.json").split("stale text\n")
  at = 0
  for piece in outside:
    at = first.index(piece, at) + len(piece)
  assert first.endswith("Last line without newline")
  assert first.count("| optimizer |") == 2
  # The fenced example is not a block (its path does not exist and nothing failed).
  assert "```markdown\n<!-- matopt:table not/a/file.json -->\n```" in first
  again = readme.update(path)
  assert path.read_text() == first and not any(b.stale for b in again)


def test_multi_seed_records_show_mean_std_bounds_and_speedups(tmp_path):
  records = _multi_seed_records()
  _write_results(tmp_path, records)
  text = readme.blocks("<!-- matopt:table results.json -->\n<!-- /matopt:table -->\n", source=tmp_path / "README.md")[
    0
  ].new
  lines = text.strip().splitlines()
  assert lines[0] == (
    "| optimizer | learning rate | final val loss | steps to adamw's loss | data speedup | time speedup | tokens/s |"
  )
  rows = {line.split(" | ")[0].removeprefix("| "): line.split(" | ")[1:] for line in lines[2:5]}
  assert list(rows) == ["muon", "adamw", "nsgd (diverged: 1/2 seeds)"]  # sorted by mean final val loss
  muon, adamw, nsgd = rows.values()
  assert muon[1] == "2.720 ± 0.028" == metrics.format_summary(metrics.summarize([2.70, 2.74]), 3)
  assert muon[2] == "63 ± 3"
  assert muon[3] == "2.50 (n=1; 1/2 >4)"  # a bound is counted, not averaged
  assert muon[4] == "1.70 ± 0.14"
  assert muon[5] == "51000 ± 1414 |"
  assert adamw[0] == "0.01, b2=0.95 (best of 4)"
  assert nsgd[1] == "3.200 (n=1; 1/2 diverged)" and nsgd[2] == "not reached (2/2)"
  assert nsgd[3:5] == ["<1", "<0.9"]
  caption = "\n".join(lines[6:])
  assert "mean ± sample std over 2 seeds (0, 1" in caption
  assert "adamw's mean final val loss 3" in caption
  assert "Wen et al. (2025)" in caption and "1×, 2×, 4× the steps" in caption
  assert "(in nats/byte)" in caption and "Sorted by mean final val loss" in caption


def test_single_seed_records_have_no_spread_and_no_columns_they_lack():
  records = json.loads((REPO / QUICKSTART).read_text())
  text = readme.table(records, source=QUICKSTART)
  head = text.splitlines()[0]
  # One seed, a baseline, no longer horizons: steps to the baseline's loss, no speedups.
  assert head == "| optimizer | learning rate | final val loss | steps to adamw's loss | tokens/s |"
  assert "±" not in text and "speedup" not in text
  without = [{k: v for k, v in r.items() if k != "steps_to_target"} for r in records]
  assert readme.table(without, source=QUICKSTART).splitlines()[0] == (
    "| optimizer | learning rate | final val loss | tokens/s |"
  )
  best = min(records, key=lambda r: r["final_val_loss"])
  assert text.splitlines()[2].startswith(
    f"| {best['optimizer']} | {best['learning_rate']:.4g} | {best['final_val_loss']:.4g} |"
  )
  assert "One seed (0) per optimizer" in text


def test_a_missing_results_file_names_the_markdown_file_and_line(tmp_path, capsys):
  path = tmp_path / "README.md"
  path.write_text("# T\n\n<!-- matopt:table docs/missing/results.json -->\n<!-- /matopt:table -->\n")
  with pytest.raises(readme.ReadmeError, match=r"README\.md:3: .*docs/missing/results\.json does not exist"):
    readme.update(path)
  for argv in (["readme", str(path)], ["readme", "--check", str(path)]):
    assert cli.main(argv) == 2
    assert capsys.readouterr().err.startswith(f"matopt: error: {path}:3: ")


@pytest.mark.parametrize(
  "text, line, says",
  [
    ("a\n<!-- matopt:table r.json -->\n| old |\n", 2, "has no `<!-- /matopt:table -->` after it"),
    (
      "<!-- matopt:table r.json -->\n<!-- matopt:table r.json -->\n<!-- /matopt:table -->\n",
      1,
      "before the next table marker on line 2",
    ),
    ("a\nb\n<!-- /matopt:table -->\n", 3, "without a `<!-- matopt:table PATH -->` before it"),
  ],
)
def test_unbalanced_markers_are_errors(tmp_path, capsys, text, line, says):
  _write_results(tmp_path, _multi_seed_records()[:1])
  (tmp_path / "r.json").write_text((tmp_path / "results.json").read_text())
  path = tmp_path / "README.md"
  path.write_text(text)
  assert cli.main(["readme", str(path)]) == 2
  err = capsys.readouterr().err
  assert err.startswith(f"matopt: error: {path}:{line}: ") and says in err
  assert path.read_text() == text


def test_results_that_are_not_records_are_errors(tmp_path):
  (tmp_path / "results.json").write_text('{"optimizer": "adamw"}')
  with pytest.raises(readme.ReadmeError, match=r"not a results\.json of `matopt run`"):
    readme.blocks("<!-- matopt:table results.json -->\n<!-- /matopt:table -->\n", source=tmp_path / "x.md")


def test_cli_exit_codes(tmp_path, monkeypatch, capsys):
  _write_results(tmp_path / "docs", _multi_seed_records())
  monkeypatch.chdir(tmp_path)
  assert cli.main(["readme", "--check"]) == 2  # the default README.md is missing here
  assert "README.md does not exist" in capsys.readouterr().err
  Path("README.md").write_text(_markdown("docs/results.json"))
  Path("other.md").write_text("No tables here.\n")
  before = Path("README.md").read_text()
  assert cli.main(["readme", "--check"]) == 1
  assert Path("README.md").read_text() == before
  assert cli.main(["readme"]) == 0
  assert "README.md:7: regenerated the table from docs/results.json" in capsys.readouterr().out
  assert cli.main(["readme", "--check", "README.md", "other.md"]) == 0
  assert "Up to date: 1 table" in capsys.readouterr().out
  assert cli.main(["readme", "--check", "other.md"]) == 0
  assert "No `<!-- matopt:table PATH -->` blocks" in capsys.readouterr().out

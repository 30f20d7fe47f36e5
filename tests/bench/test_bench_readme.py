"""benchmarks/results/README.md quotes the generated tables verbatim (fuxictr_chime.bench.readme)."""
from pathlib import Path

import pytest

from fuxictr_chime.bench.readme import compose_readme, fill_markers, stale_blocks
from fuxictr_chime.errors import DataError

REPO = Path(__file__).resolve().parents[2]


def _folder(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "t.md").write_text("| a |\n|---|\n| 1 |\n")
    (tmp_path / "u.md").write_text("no newline at end")
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- sub/t.md -->\nold table\n<!-- end sub/t.md -->\nmiddle\n"
                      "<!-- u.md -->\n<!-- end u.md -->\nend\n")
    return readme


def test_fill_replaces_each_block_by_its_file_and_keeps_the_rest(tmp_path):
    readme = _folder(tmp_path)
    text = fill_markers(readme.read_text(), tmp_path)
    assert text == ("intro\n<!-- sub/t.md -->\n| a |\n|---|\n| 1 |\n<!-- end sub/t.md -->\nmiddle\n"
                    "<!-- u.md -->\nno newline at end\n<!-- end u.md -->\nend\n")
    assert stale_blocks(text, tmp_path) == []
    assert fill_markers(text, tmp_path) == text  # idempotent


def test_check_reports_without_writing_and_compose_writes(tmp_path):
    readme = _folder(tmp_path)
    before = readme.read_text()
    assert compose_readme(readme, check=True) == ["sub/t.md", "u.md"]
    assert readme.read_text() == before
    assert compose_readme(readme) == ["sub/t.md", "u.md"]
    assert compose_readme(readme, check=True) == []


def test_missing_file_and_unmatched_marker_name_the_marker(tmp_path):
    with pytest.raises(DataError, match="gone.md"):
        fill_markers("<!-- gone.md -->\nx\n<!-- end gone.md -->\n", tmp_path)
    (tmp_path / "a.md").write_text("a\n")
    with pytest.raises(DataError, match="end a.md"):
        fill_markers("<!-- a.md -->\nx\n", tmp_path)


def test_committed_results_readme_quotes_the_current_tables():
    """Fails when a benchmark rewrote a table but the README was not recomposed:
    run `python benchmarks/compose_results_readme.py`."""
    readme = REPO / "benchmarks" / "results" / "README.md"
    assert compose_readme(readme, check=True) == []

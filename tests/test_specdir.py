"""Finding specs in a repository and reading their files, with real files under tmp_path."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from qw.errors import SpecError, UsageError
from qw.specdir import find_repo_root, list_specs, load_spec, read_text, resolve_spec

FIXTURES = Path(__file__).parent / "fixtures" / "specs"


@pytest.fixture
def repo(tmp_path):
    """A repository with two specs and three steering docs."""
    root = tmp_path / "repo"
    specs = root / ".claude" / "specs"
    shutil.copytree(FIXTURES / "every-feature", specs / "orders")
    shutil.copytree(FIXTURES / "upstream-renumbered", specs / "catalog")
    steering = root / ".claude" / "steering"
    steering.mkdir()
    for name in ("tech", "product", "structure"):
        (steering / f"{name}.md").write_text(f"# {name}\n", encoding="utf-8")
    (steering / "notes.txt").write_text("not a steering doc", encoding="utf-8")
    return root


# --- the repository root ----------------------------------------------------------------

def test_root_is_the_nearest_ancestor_with_claude_or_git(tmp_path):
    outer = tmp_path / "outer"
    inner = outer / "packages" / "inner"
    (outer / ".git").mkdir(parents=True)
    (inner / ".claude").mkdir(parents=True)
    (inner / "src" / "deep").mkdir(parents=True)
    assert find_repo_root(str(inner / "src" / "deep")) == str(inner)
    assert find_repo_root(str(outer / "packages")) == str(outer)
    assert find_repo_root(str(inner)) == str(inner)


def test_git_file_of_a_worktree_marks_a_root(tmp_path):
    (tmp_path / "wt" / "sub").mkdir(parents=True)
    (tmp_path / "wt" / ".git").write_text("gitdir: /elsewhere\n", encoding="utf-8")
    assert find_repo_root(str(tmp_path / "wt" / "sub")) == str(tmp_path / "wt")


def test_without_a_marker_the_start_directory_is_the_root(tmp_path):
    start = tmp_path / "plain" / "dir"
    start.mkdir(parents=True)
    ancestors = [start, *start.parents]
    if any((p / ".claude").is_dir() or (p / ".git").exists() for p in ancestors):
        pytest.skip("an ancestor of the temporary directory is itself a repository")
    assert find_repo_root(str(start)) == str(start)


# --- naming a spec ----------------------------------------------------------------------

def test_list_specs_names_folders_only(repo):
    specs = repo / ".claude" / "specs"
    (specs / "README.md").write_text("about specs", encoding="utf-8")
    (specs / ".hidden").mkdir()
    assert list_specs(str(repo)) == ["catalog", "orders"]
    assert list_specs(str(repo / "nowhere")) == []


def test_resolve_by_name(repo):
    paths = resolve_spec(str(repo), "orders")
    folder = repo / ".claude" / "specs" / "orders"
    assert (paths.name, paths.dir, paths.tasks) == ("orders", str(folder), str(folder / "tasks.md"))
    assert paths.requirements == str(folder / "requirements.md")
    assert paths.design == str(folder / "design.md")
    assert paths.repo == str(repo)


def test_resolve_by_folder_path_relative_to_the_working_directory(repo, monkeypatch):
    monkeypatch.chdir(repo / ".claude")
    paths = resolve_spec(str(repo), os.path.join("specs", "catalog"))
    assert paths.name == "catalog"
    assert paths.tasks == str(repo / ".claude" / "specs" / "catalog" / "tasks.md")
    monkeypatch.chdir(repo / ".claude" / "specs" / "catalog")
    assert resolve_spec(str(repo), ".").dir == str(repo / ".claude" / "specs" / "catalog")


def test_resolve_by_tasks_file_anywhere(tmp_path, repo):
    elsewhere = tmp_path / "drafts" / "sprint-3"
    elsewhere.mkdir(parents=True)
    plan = elsewhere / "plan.md"
    plan.write_text("- [ ] 1. One\n", encoding="utf-8")
    paths = resolve_spec(str(repo), str(plan))
    assert (paths.name, paths.dir, paths.tasks) == ("sprint-3", str(elsewhere), str(plan))
    assert paths.design == str(elsewhere / "design.md")
    assert paths.repo == str(repo)


def test_unknown_spec_lists_the_available_ones(repo):
    with pytest.raises(UsageError) as caught:
        resolve_spec(str(repo), "ordres")
    specs_dir = os.path.join(str(repo), ".claude", "specs")
    assert str(caught.value) == f"unknown spec 'ordres', {specs_dir}; available: catalog, orders"


def test_unknown_spec_in_a_repository_without_specs(tmp_path):
    with pytest.raises(UsageError) as caught:
        resolve_spec(str(tmp_path), "orders")
    assert str(caught.value).endswith(
        "; no specs yet: run `qw init` or create .claude/specs/<name>/tasks.md")


# --- reading ----------------------------------------------------------------------------

def test_load_spec_reads_every_document(repo):
    spec = load_spec(resolve_spec(str(repo), "orders"))
    assert spec.name == "orders"
    assert spec.tasks.path == spec.paths.tasks
    assert [t.id for t in spec.tasks][:3] == ["1", "2", "3"]
    assert spec.requirements is not None and spec.requirements.path == spec.paths.requirements
    assert spec.requirements.resolve("1.1").endswith("SHALL give it an id")
    assert spec.design is not None and spec.design.sections[0].heading == "Design Document"
    assert [d.name for d in spec.steering] == ["product", "structure", "tech"]
    assert spec.steering[0].text == "# product\n"
    assert spec.steering[0].path == str(repo / ".claude" / "steering" / "product.md")


def test_requirements_and_design_are_optional(repo):
    spec = load_spec(resolve_spec(str(repo), "catalog"))
    assert spec.requirements is None and spec.design is None
    assert len(spec.tasks) == 17


def test_missing_tasks_file_names_the_path(repo):
    (repo / ".claude" / "specs" / "draft").mkdir()
    paths = resolve_spec(str(repo), "draft")
    with pytest.raises(SpecError) as caught:
        load_spec(paths)
    assert str(caught.value).startswith(f"spec 'draft' has no tasks file, {paths.tasks}; ")


def test_parse_errors_name_the_real_file(repo):
    tasks = repo / ".claude" / "specs" / "catalog" / "tasks.md"
    tasks.write_text("- [ ] 1. A\n- [ ] 1. B\n", encoding="utf-8")
    with pytest.raises(SpecError) as caught:
        load_spec(resolve_spec(str(repo), "catalog"))
    assert f"(first at {tasks}:1), {tasks}:2;" in str(caught.value)


def test_read_text_keeps_bom_and_line_endings(tmp_path):
    path = tmp_path / "tasks.md"
    path.write_bytes(b"\xef\xbb\xbf- [ ] 1. Caf\xc3\xa9\r\n  detail\n")
    assert read_text(str(path)) == "\ufeff- [ ] 1. Caf\u00e9\r\n  detail\n"


@pytest.mark.parametrize("name", ["tasks.md", "requirements.md", "design.md"])
def test_a_file_that_is_not_utf8_names_the_line_of_the_bad_byte(repo, name):
    path = repo / ".claude" / "specs" / "orders" / name
    data = path.read_bytes().split(b"\n")
    data[2] = data[2] + b" \xff\xfe caf\xe9"
    path.write_bytes(b"\n".join(data))
    with pytest.raises(SpecError) as caught:
        load_spec(resolve_spec(str(repo), "orders"))
    assert str(caught.value) == f"not UTF-8 text (byte 0xff), {path}:3; save it as UTF-8"


def test_a_bad_byte_on_the_first_line(tmp_path):
    path = tmp_path / "tasks.md"
    path.write_bytes(b"\xe9t\xe9\n")
    with pytest.raises(SpecError, match=r"tasks\.md:1; save it as UTF-8$"):
        read_text(str(path))


def test_a_directory_in_place_of_a_file_gives_the_os_reason(repo):
    design = repo / ".claude" / "specs" / "orders" / "design.md"
    design.unlink()
    design.mkdir()
    with pytest.raises(SpecError) as caught:
        load_spec(resolve_spec(str(repo), "orders"))
    assert str(caught.value) == (
        f"cannot read file: it is a directory, {design}; check that it is a readable file")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root reads a chmod 000 file anyway; the directory test covers this")
def test_an_unreadable_file_gives_the_os_reason(repo):
    tasks = repo / ".claude" / "specs" / "orders" / "tasks.md"
    tasks.chmod(0)
    try:
        with pytest.raises(SpecError) as caught:
            load_spec(resolve_spec(str(repo), "orders"))
    finally:
        tasks.chmod(0o644)
    assert str(caught.value) == (
        f"cannot read file: Permission denied, {tasks}; check that it is a readable file")


def test_read_text_of_a_missing_file(tmp_path):
    with pytest.raises(SpecError) as caught:
        read_text(str(tmp_path / "gone.md"))
    assert str(caught.value).startswith(f"file not found, {tmp_path / 'gone.md'}; ")


def test_claude_codes_own_folder_in_home_does_not_make_home_a_repository(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / ".claude").mkdir(parents=True)          # Claude Code's settings folder
    work = home / "work" / "project"
    work.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    assert find_repo_root(str(work)) == str(work)
    (home / "work" / ".git").mkdir()
    assert find_repo_root(str(work)) == str(home / "work")

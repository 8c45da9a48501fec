"""The task graph: inferred edges and their reasons, modes, groups, cycles, and queries."""

from __future__ import annotations

import gc
import json
import os
import sys

import pytest

from qw.errors import ConfigError, SpecError, UsageError
from qw.plan import DependencyCycle, build_plan, normalise_path
from qw.tasks import Task, TaskList, parse_tasks

SERIAL = 'declares no file or dependency: runs after the task before it ([plan] undeclared = "serial")'


def tasklist(*specs: dict, path: str = "tasks.md") -> TaskList:
    """Tasks from dicts of Task fields; lines default to 2, 4, 6... and `children`
    is filled in from the `parent` of the others."""
    children: dict = {}
    for spec in specs:
        if spec.get("parent"):
            children.setdefault(spec["parent"], []).append(spec["id"])
    tasks = []
    for number, spec in enumerate(specs, 1):
        fields = {"title": f"Task {spec['id']}", "mark": " ", "line": 2 * number,
                  "end_line": 2 * number + 1, "indent": 0,
                  "children": tuple(children.get(spec["id"], ()))}
        fields.update(spec)
        for key in ("files", "leverage", "task_refs"):
            fields[key] = tuple(fields.get(key, ()))
        if fields.get("depends") is not None:
            fields["depends"] = tuple(fields["depends"])
        tasks.append(Task(**fields))
    return TaskList(path=path, tasks=tuple(tasks))


def t(task_id: str, **fields) -> dict:
    return dict(id=task_id, **fields)


def plan_of(*specs: dict, **modes):
    return build_plan(tasklist(*specs), **modes)


# --- rule 1: _Depends ------------------------------------------------------------------


def test_explicit_depends_is_an_edge_with_its_line():
    plan = plan_of(t("1", files=["a.py"]), t("2", files=["b.py"]),
                   t("3", files=["c.py"], depends=["1", "2"], depends_line=14))
    assert plan.deps["3"] == ("1", "2")
    assert plan.reasons["3"] == {"1": "_Depends: 1, 2 (tasks.md:14)",
                                 "2": "_Depends: 1, 2 (tasks.md:14)"}


def test_depends_may_name_a_later_task():
    plan = plan_of(t("1", files=["a.py"], depends=["2"], depends_line=3), t("2", files=["b.py"]))
    assert plan.deps == {"1": ("2",), "2": ()}
    assert plan.batches() == [["2"], ["1"]]


def test_depends_on_an_unknown_task_is_a_spec_error_with_its_line():
    with pytest.raises(SpecError) as caught:
        plan_of(t("1"), t("2", depends=["7"], depends_line=14))
    assert str(caught.value) == ("_Depends names unknown task 7, tasks.md:14; "
                                 "use an id from this tasks.md")


def test_depends_on_an_unknown_task_is_an_error_in_every_mode():
    for mode in ("explicit", "sequential"):
        with pytest.raises(SpecError, match="unknown task 9"):
            plan_of(t("1", depends=["9"], depends_line=3), dependencies=mode)


def test_depends_on_its_own_group_is_a_spec_error():
    with pytest.raises(SpecError) as caught:
        plan_of(t("1"), t("1.1", parent="1", depends=["1"], depends_line=5), t("1.2", parent="1"))
    assert "_Depends of task 1.1 names 1, a group that holds it, tasks.md:5" in str(caught.value)


def test_depends_on_itself_is_dropped():
    plan = plan_of(t("1", files=["a"], depends=["1"], depends_line=3))
    assert plan.deps == {"1": ()}


# --- rule 2: the same file ------------------------------------------------------------


def test_tasks_declaring_the_same_file_run_in_document_order():
    plan = plan_of(t("1", files=["src/x.py"]), t("2", files=["src/y.py"]),
                   t("3", files=["src/x.py"]))
    assert plan.deps == {"1": (), "2": (), "3": ("1",)}
    assert plan.reasons["3"] == {"1": "both change src/x.py"}


def test_the_later_task_waits_for_the_nearest_earlier_declarer_only():
    plan = plan_of(t("1", files=["x.py"]), t("2", files=["x.py"]), t("3", files=["x.py"]))
    assert plan.deps == {"1": (), "2": ("1",), "3": ("2",)}


def test_paths_match_after_normalisation():
    plan = plan_of(t("1", files=["./src\\x.py"]), t("2", files=["src/x.py"]))
    assert plan.reasons["2"] == {"1": "both change src/x.py"}
    assert normalise_path(".\\src\\dir\\") == "src/dir"


def test_a_bare_name_in_a_title_matches_the_full_path():
    plan = plan_of(t("1", files=["src/models/FeatureModel.ts"]),
                   t("2", files=["FeatureModel.ts"]), t("3", files=["models/FeatureModel.ts"]))
    assert plan.reasons["2"] == {"1": "both change src/models/FeatureModel.ts"}
    assert plan.reasons["3"] == {"2": "both change models/FeatureModel.ts"}


def test_paths_match_only_at_a_slash_boundary():
    plan = plan_of(t("1", files=["a/x.ts"]), t("2", files=["b/x.ts"]),
                   t("3", files=["OldFeatureModel.ts"]), t("4", files=["FeatureModel.ts"]))
    assert all(deps == () for deps in plan.deps.values())


def test_a_bare_name_waits_for_every_distinct_path_it_may_mean():
    # 1 and 2 do not conflict, but "x.ts" may be either of them: wait for both.
    plan = plan_of(t("1", files=["a/x.ts"]), t("2", files=["b/x.ts"]), t("3", files=["x.ts"]))
    assert plan.deps["3"] == ("1", "2")
    # Once something declared the bare name, a later task waits for that one alone.
    plan = plan_of(t("1", files=["a/x.ts"]), t("2", files=["x.ts"]), t("3", files=["a/x.ts"]))
    assert plan.deps["3"] == ("2",)


# --- rule 3: _Leverage ----------------------------------------------------------------


def test_leveraging_a_file_an_earlier_task_declares_is_an_edge():
    plan = plan_of(t("1", files=["src/types/base.ts"]), t("2", files=["src/ui.ts"]),
                   t("3", files=["src/feature.ts"], leverage=["src/types/base.ts"]))
    assert plan.reasons["3"] == {"1": "leverages src/types/base.ts from task 1"}


def test_leveraging_a_directory_waits_for_the_files_under_it():
    plan = plan_of(t("1", files=["src/types/base.ts"]), t("2", files=["src/types/user.ts"]),
                   t("3", files=["lib/other.ts"]), t("4", files=["app.ts"], leverage=["src/types/"]))
    assert plan.reasons["4"] == {"1": "leverages src/types/ from task 1",
                                 "2": "leverages src/types/ from task 2"}


def test_leveraging_what_no_earlier_task_declares_is_no_edge():
    plan = plan_of(t("1", files=["a.ts"], leverage=["b.ts"]), t("2", files=["b.ts"]),
                   t("3", files=["c.ts"], leverage=["existing auth patterns"]))
    assert plan.deps == {"1": (), "2": (), "3": ()}


# --- rule 4: "task N" mentions -------------------------------------------------------


def test_mentioning_an_earlier_task_is_an_edge():
    plan = plan_of(t("1", files=["a"]), t("2", files=["b"]), t("3", files=["c"], task_refs=["2"]))
    assert plan.reasons["3"] == {"2": "mentions task 2"}


def test_mentioning_a_later_or_unknown_task_is_ignored():
    plan = plan_of(t("1", files=["a"], task_refs=["2", "42"]), t("2", files=["b"]))
    assert plan.deps == {"1": (), "2": ()}


def test_the_first_reason_for_an_edge_is_kept():
    plan = plan_of(t("1", files=["x"]),
                   t("2", files=["x"], task_refs=["1"], depends=["1"], depends_line=5))
    assert plan.reasons["2"] == {"1": "_Depends: 1 (tasks.md:5)"}


# --- rule 5: undeclared tasks ---------------------------------------------------------


def test_an_undeclared_task_runs_after_the_task_before_it_by_default():
    plan = plan_of(t("1", files=["a"]), t("2"), t("3"))
    assert plan.deps == {"1": (), "2": ("1",), "3": ("2",)}
    assert plan.reasons["2"] == {"1": SERIAL}


def test_undeclared_parallel_lets_undeclared_tasks_run_freely():
    plan = plan_of(t("1", files=["a"]), t("2"), t("3"), undeclared="parallel")
    assert plan.batches() == [["1", "2", "3"]]


def test_a_task_with_an_inferred_dependency_is_not_serialised():
    plan = plan_of(t("1", files=["a"]), t("2", files=["b"]), t("3", task_refs=["1"]))
    assert plan.deps["3"] == ("1",)


def test_depends_none_opts_out_of_serial():
    plan = plan_of(t("1", files=["a"]), t("2", depends=[], depends_line=5), t("3"))
    assert plan.deps == {"1": (), "2": (), "3": ("2",)}


def test_the_first_task_has_nothing_to_follow():
    assert plan_of(t("1")).deps == {"1": ()}


# --- modes ----------------------------------------------------------------------------


def test_explicit_mode_uses_only_depends():
    specs = (t("1", files=["x"]), t("2", files=["x"], task_refs=["1"]), t("3"),
             t("4", depends=["2"], depends_line=9))
    plan = plan_of(*specs, dependencies="explicit")
    assert plan.deps == {"1": (), "2": (), "3": (), "4": ("2",)}


def test_sequential_mode_chains_every_runnable_task():
    plan = plan_of(t("1", files=["a"]), t("2"), t("2.1", parent="2"), t("2.2", parent="2"),
                   t("3", files=["b"], depends=[], depends_line=9), dependencies="sequential")
    assert plan.deps == {"1": (), "2.1": ("1",), "2.2": ("2.1",), "3": ("2.2",)}
    assert plan.reasons["3"] == {
        "2.2": 'runs after the task before it ([plan] dependencies = "sequential")'}


def test_an_unknown_mode_is_a_config_error_naming_key_and_values():
    with pytest.raises(ConfigError) as caught:
        plan_of(t("1"), dependencies="auto")
    message = str(caught.value)
    assert "[plan] dependencies" in message and '"auto"' in message
    assert all(f'"{m}"' in message for m in ("infer", "explicit", "sequential"))
    with pytest.raises(ConfigError) as caught:
        plan_of(t("1"), undeclared="free")
    assert "[plan] undeclared" in str(caught.value)
    assert '"serial"' in str(caught.value) and '"parallel"' in str(caught.value)


# --- groups ---------------------------------------------------------------------------


def grouped():
    return (t("1", files=["setup.py"]),
            t("2", title="Models"), t("2.1", parent="2", files=["a.py"]),
            t("2.2", parent="2", files=["b.py"]),
            t("3", files=["api.py"], depends=["2"], depends_line=12))


def test_groups_are_not_run_and_list_their_leaves():
    plan = plan_of(*grouped())
    assert [task.id for task in plan.tasks] == ["1", "2.1", "2.2", "3"]
    assert plan.groups == {"2": ("2.1", "2.2")}


def test_a_dependency_on_a_group_waits_for_all_its_leaves():
    plan = plan_of(*grouped())
    assert plan.deps["3"] == ("2.1", "2.2")
    assert plan.ready({"1", "2.1"}) == ["2.2"]
    assert plan.ready({"1", "2.1", "2.2"}) == ["3"]


def test_a_groups_depends_applies_to_each_leaf():
    plan = plan_of(t("1", files=["a"]), t("2", files=["b"]),
                   t("3", depends=["1"], depends_line=7),
                   t("3.1", parent="3", files=["c"]), t("3.2", parent="3", files=["d"]))
    assert plan.deps["3.1"] == plan.deps["3.2"] == ("1",)
    assert plan.reasons["3.2"] == {"1": "_Depends: 1 (tasks.md:7)"}
    assert plan.batches() == [["1", "2"], ["3.1", "3.2"]]


def test_undeclared_subtasks_follow_each_other_inside_a_group_with_depends():
    # The group's _Depends replaces the link into the group, not the links inside it.
    plan = plan_of(t("1", files=["a"]), t("2", files=["b"]),
                   t("3", depends=["1"], depends_line=7), t("3.1", parent="3"), t("3.2", parent="3"))
    assert plan.deps["3.1"] == ("1",)
    assert plan.deps["3.2"] == ("1", "3.1")
    assert plan.reasons["3.2"]["3.1"] == SERIAL


def test_a_groups_file_mention_reaches_its_leaves():
    plan = plan_of(t("1", files=["x.ts"]), t("2", files=["b"]), t("3", task_refs=["1"]),
                   t("3.1", parent="3", files=["c"]), t("3.2", parent="3", files=["d"]))
    assert plan.reasons["3.1"] == {"1": "mentions task 1 (in group 3)"}
    plan = plan_of(t("1", files=["x.ts"]), t("2", title="Edit x.ts", files=["x.ts"]),
                   t("2.1", parent="2"), t("2.2", parent="2"))
    assert plan.deps == {"1": (), "2.1": ("1",), "2.2": ("2.1",)}


def test_nested_groups():
    plan = plan_of(t("1"), t("1.1", parent="1"), t("1.1.1", parent="1.1", files=["a"]),
                   t("1.1.2", parent="1.1", files=["b"]), t("1.2", parent="1", files=["c"]),
                   t("2", files=["d"], depends=["1"], depends_line=20))
    assert plan.groups == {"1": ("1.1.1", "1.1.2", "1.2"), "1.1": ("1.1.1", "1.1.2")}
    assert plan.deps["2"] == ("1.1.1", "1.1.2", "1.2")


def test_a_mention_of_the_enclosing_group_is_not_an_edge():
    plan = plan_of(t("1"), t("1.1", parent="1", files=["a"], task_refs=["1"]),
                   t("1.2", parent="1", files=["b"], task_refs=["1", "1.1"]))
    assert plan.deps == {"1.1": (), "1.2": ("1.1",)}


# --- cycles ---------------------------------------------------------------------------


def test_a_two_task_cycle_names_both_tasks_and_lines():
    with pytest.raises(DependencyCycle) as caught:
        plan_of(t("1", files=["a"]), t("2", line=5, files=["b"], depends=["3"], depends_line=6),
                t("3", line=9, files=["c"], depends=["2"], depends_line=10))
    assert str(caught.value) == (
        "dependency cycle 2 (tasks.md:5) -> 3 (tasks.md:9) -> 2 (2 waits for 3: _Depends: 3 "
        "(tasks.md:6); 3 waits for 2: _Depends: 2 (tasks.md:10)), tasks.md:5; remove one of "
        "these _Depends or file overlaps")
    assert isinstance(caught.value, SpecError)
    assert caught.value.cycle == (("2", "3", "_Depends: 3 (tasks.md:6)"),
                                  ("3", "2", "_Depends: 2 (tasks.md:10)"))


def test_a_three_task_cycle_through_a_file_overlap():
    with pytest.raises(DependencyCycle) as caught:
        plan_of(t("1", line=3, files=["x.py"], depends=["3"], depends_line=4),
                t("2", line=7, files=["x.py"]),
                t("3", line=11, files=["y.py"], task_refs=["2"]))
    message = str(caught.value)
    assert message.startswith("dependency cycle 1 (tasks.md:3) -> 3 (tasks.md:11) -> "
                              "2 (tasks.md:7) -> 1 (")
    assert "3 waits for 2: mentions task 2" in message
    assert [reason for _, _, reason in caught.value.cycle] == [
        "_Depends: 3 (tasks.md:4)", "mentions task 2", "both change x.py"]


def test_a_cycle_beside_independent_tasks_is_found():
    with pytest.raises(DependencyCycle, match=r"cycle 3 \(tasks.md:6\) -> 4 \(tasks.md:8\) -> 3"):
        plan_of(t("1", files=["a"]), t("2", files=["b"], depends=["1"], depends_line=4),
                t("3", files=["c"], depends=["4"], depends_line=6),
                t("4", files=["d"], depends=["3"], depends_line=8))


# --- queries --------------------------------------------------------------------------


def diamond():
    return plan_of(t("1", files=["a"]), t("2", files=["b"], depends=["1"], depends_line=1),
                   t("3", files=["c"], depends=["1"], depends_line=1),
                   t("4", files=["d"], depends=["2", "3"], depends_line=1),
                   t("5", files=["e"]))


def test_ready_follows_completions():
    plan = diamond()
    assert plan.ready(set()) == ["1", "5"]
    assert plan.ready(set(), {"1"}) == ["5"]
    assert plan.ready({"1"}, {"5"}) == ["2", "3"]
    assert plan.ready({"1", "2"}) == ["3", "5"]
    assert plan.ready({"1", "2", "3", "5"}) == ["4"]
    assert plan.ready({"1", "2", "3", "4", "5"}) == []


def test_batches_are_kahn_layers_in_document_order():
    assert diamond().batches() == [["1", "5"], ["2", "3"], ["4"]]


def test_critical_path_counts_tasks_without_durations_and_breaks_ties_by_document_order():
    assert diamond().critical_path() == ["1", "2", "4"]


def test_critical_path_follows_durations():
    plan = diamond()
    assert plan.critical_path({"1": 60, "2": 10, "3": 300, "4": 60, "5": 30}) == ["1", "3", "4"]
    assert plan.critical_path({"1": 1, "2": 1, "3": 1, "4": 1, "5": 100}) == ["5"]
    # A task without a duration counts as the mean of the others (3 counts 10.25).
    assert plan.critical_path({"1": 10, "2": 1, "4": 10, "5": 20}) == ["1", "3", "4"]


def test_closure_takes_all_prerequisites():
    plan = diamond()
    assert plan.closure(["4"]) == ["1", "2", "3", "4"]
    assert plan.closure(["2", "5"]) == ["1", "2", "5"]
    assert plan_of(*grouped()).closure(["3"]) == ["2.1", "2.2", "3"]
    assert plan_of(*grouped()).closure(["2"]) == ["2.1", "2.2"]


def test_closure_of_an_unknown_id_is_a_usage_error_naming_it():
    with pytest.raises(UsageError, match="unknown task 9"):
        diamond().closure(["9"])


def test_to_json_shape():
    plan = plan_of(*grouped())
    data = plan.to_json()
    assert json.loads(json.dumps(data)) == data
    assert data == {
        "tasks": [
            {"id": "1", "title": "Task 1", "line": 2, "deps": [], "reasons": {}},
            {"id": "2.1", "title": "Task 2.1", "line": 6, "deps": [], "reasons": {}},
            {"id": "2.2", "title": "Task 2.2", "line": 8, "deps": [], "reasons": {}},
            {"id": "3", "title": "Task 3", "line": 10, "deps": ["2.1", "2.2"],
             "reasons": {"2.1": "_Depends: 2 (tasks.md:12)", "2.2": "_Depends: 2 (tasks.md:12)"}},
        ],
        "groups": {"2": ["2.1", "2.2"]},
        "batches": [["1", "2.1", "2.2"], ["3"]],
        "critical_path": ["2.1", "3"],
    }


def test_an_empty_task_list_is_an_empty_plan():
    plan = build_plan(TaskList(path="tasks.md", tasks=()))
    assert plan.to_json() == {"tasks": [], "groups": {}, "batches": [], "critical_path": []}


# --- scale ----------------------------------------------------------------------------


def test_ten_thousand_tasks_plan():
    specs = []
    for n in range(1, 10001):
        spec = t(str(n), files=[f"src/m{n % 700}/f{n % 300}.py"])
        if n % 7 == 0:
            spec["leverage"] = [f"src/m{(n + 1) % 700}/"]
        if n % 11 == 0:
            spec["task_refs"] = [str(n - 5)]
        if n % 13 == 0:
            spec["depends"], spec["depends_line"] = [str(n - 1), str(n - 2)], 2 * n + 1
        if n % 17 == 0:
            spec["files"] = []
        specs.append(spec)
    plan = build_plan(tasklist(*specs))
    assert len(plan.tasks) == 10000
    assert sum(len(layer) for layer in plan.batches()) == 10000
    assert len(plan.critical_path()) >= 2


def test_a_ten_thousand_task_chain_and_cycle_need_no_recursion():
    specs = [t(str(n)) for n in range(1, 10001)]
    plan = build_plan(tasklist(*specs), dependencies="sequential")
    assert len(plan.batches()) == 10000
    assert len(plan.critical_path()) == 10000
    assert len(plan.closure(["10000"])) == 10000
    # A cycle of declared edges (default "after the task before it" edges would give way).
    specs = [t(str(n), depends=[str(n - 1 if n > 1 else 10000)], depends_line=n)
             for n in range(1, 10001)]
    with pytest.raises(DependencyCycle) as caught:
        build_plan(tasklist(*specs))
    assert len(caught.value.cycle) == 10000
    assert sys.getrecursionlimit() < 10000  # the point of the test


# --- from tasks.md text, through qw.tasks.parse_tasks ---------------------------------

SPEC = """# Tasks

- [ ] 1\\. Create core interfaces in src/types/feature.ts
  - File: src/types/feature.ts
  - _Leverage: src/types/base.ts_
- [ ] 2. Models
  - [ ] 2.1 Add FeatureModel.ts
    - File: src/models/FeatureModel.ts
  - [x] 2.2 Add tests
    - Uses what task 1 defined
    - _Depends: none_
- [ ] 3. Service
- [ ] 3.1 Implement the service in src/services/feature.ts
  - _Leverage: src/types/_
- [ ] 3.2 Wire it up after task 2
  - _Depends: 2_
- [ ] 4. Touch FeatureModel.ts again
"""


def test_a_parsed_spec_with_both_subtask_styles_and_an_escaped_id():
    plan = build_plan(parse_tasks(SPEC, "tasks.md"))
    assert [task.id for task in plan.tasks] == ["1", "2.1", "2.2", "3.1", "3.2", "4"]
    assert plan.groups == {"2": ("2.1", "2.2"), "3": ("3.1", "3.2")}
    assert plan.reasons == {
        "1": {},
        "2.1": {},
        "2.2": {"1": "mentions task 1"},
        "3.1": {"1": "leverages src/types/ from task 1"},
        "3.2": {"2.1": "_Depends: 2 (tasks.md:16)", "2.2": "_Depends: 2 (tasks.md:16)"},
        "4": {"2.1": "both change src/models/FeatureModel.ts"},
    }
    assert plan.batches() == [["1", "2.1"], ["2.2", "3.1", "4"], ["3.2"]]


def test_a_parsed_spec_drives_group_checkboxes_and_closure():
    plan = build_plan(parse_tasks(SPEC, "tasks.md"))
    done = {task.id for task in plan.tasks if task.status == "done"}
    assert done == {"2.2"}
    assert plan.closure(["3.2"]) == ["1", "2.1", "2.2", "3.2"]
    assert plan.ready(done) == ["1", "2.1"]


def test_a_parsed_cycle_names_the_lines():
    text = ("- [ ] 1. A\n  - File: a.py\n- [ ] 2. B\n  - _Depends: 3_\n"
            "- [ ] 3. C\n  - _Depends: 2_\n")
    with pytest.raises(DependencyCycle) as caught:
        build_plan(parse_tasks(text, "tasks.md"))
    assert str(caught.value).startswith(
        "dependency cycle 2 (tasks.md:3) -> 3 (tasks.md:5) -> 2 (")


def test_a_forward_depends_wins_over_the_serial_default():
    plan = build_plan(parse_tasks("- [ ] 1. A\n  - _Depends: 2_\n- [ ] 2. B\n- [ ] 3. C\n"))
    assert plan.deps == {"1": ("2",), "2": (), "3": ("2",)}
    assert plan.batches() == [["2"], ["1", "3"]]


def test_a_real_cycle_names_each_edge_and_its_reason():
    text = "- [ ] 1. A\n  - _Depends: 2_\n- [ ] 2. B\n  - _Depends: 1_\n"
    with pytest.raises(DependencyCycle) as caught:
        build_plan(parse_tasks(text))
    message = str(caught.value)
    assert "1 waits for 2: _Depends: 2" in message and "2 waits for 1: _Depends: 1" in message


# --- the `qw plan` command ----------------------------------------------------------------

def test_the_plan_command_leaves_the_garbage_collector_as_it_found_it(tmp_path, monkeypatch,
                                                                      capsys):
    # `qw plan` pauses the cyclic collector while it works (qw.commands.cmd_plan); a caller
    # running it in-process, as these tests do, must get the collector back as it was.
    from qw.cli import main

    for name in list(os.environ):
        if name.startswith(("QW_", "QUANTUMWALA_")):
            monkeypatch.delenv(name)
    (tmp_path / ".git").mkdir()
    spec = tmp_path / ".claude" / "specs" / "s"
    spec.mkdir(parents=True)
    (spec / "tasks.md").write_text(SPEC, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    try:
        for enabled in (True, False):
            gc.enable() if enabled else gc.disable()
            assert main(["plan", "s"]) == 0
            assert gc.isenabled() is enabled
            assert main(["plan", "no-such-spec"]) == 2   # and when it fails
            assert gc.isenabled() is enabled
    finally:
        gc.enable()
    out = capsys.readouterr().out
    assert out.startswith("spec s: 6 runnable tasks, 1 done, ")

"""evalsuites/: suites.yaml validates, every task it names loads in lm-eval, the bundled samples are usable."""

import json

import pytest

from kollm.evals import suites

SUITES = suites.load_suites()


def test_the_three_gate_suites_exist():
    assert {"kmmlu", "click", "ko_ifeval"} <= set(SUITES)


@pytest.fixture(scope="module")
def task_manager(tmp_path_factory):
    from lm_eval.tasks import TaskManager

    planned = suites.plan(sorted(SUITES), offline=True)
    include = suites.render_include_dir(planned, tmp_path_factory.mktemp("include"))
    builtin = suites.builtin_dirs(suites.plan(sorted(SUITES), offline=False))
    # Exactly the folders the runner indexes: kollm's tasks plus the built-in folders suites.yaml names.
    return TaskManager(include_path=[str(include), *map(str, builtin)], include_defaults=False)


def test_every_task_name_is_known_to_lm_eval(task_manager):
    names = {t for spec in SUITES.values() for t in [*spec.hub.tasks, *spec.offline.tasks]}
    assert names - set(task_manager.all_tasks) == set()


def test_offline_tasks_build_from_the_bundled_samples(task_manager, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    tasks = task_manager.load([t for spec in SUITES.values() for t in spec.offline.tasks])["tasks"]
    for name, task in tasks.items():
        docs = list(task.test_docs())
        assert len(docs) >= 10, name
        if task.get_config("output_type") == "multiple_choice":
            assert all(len(task.doc_to_choice(doc)) >= 4 for doc in docs), name


@pytest.mark.parametrize("name", sorted(SUITES))
def test_bundled_sample_files_parse(name):
    for file in SUITES[name].offline.files:
        lines = (suites.SAMPLE_DATA_DIR / file).read_text(encoding="utf-8").splitlines()
        assert all(json.loads(line) for line in lines if line.strip())

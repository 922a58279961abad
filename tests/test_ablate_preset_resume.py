"""A study started with a preset name (`-c digits_quick`) resumes with `--resume --out DIR`
from any folder: study.json records the name, not a path under the folder it started in."""
import json

import pytest

from fmb.ablation.store import StudyDir, invocation_files
from fmb.ablation.study import load_study
from fmb.ablation.sweep import prepare_study


def test_invocation_files_keep_preset_names_and_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.yaml").write_text("ablate: {}\n")
    assert invocation_files(["digits_quick", "mine.yaml"]) == ["digits_quick", str(tmp_path / "mine.yaml")]


def test_resume_from_another_folder_finds_the_preset(tmp_path, monkeypatch):
    start, elsewhere, out = tmp_path / "start", tmp_path / "elsewhere", tmp_path / "study"
    start.mkdir(), elsewhere.mkdir()
    monkeypatch.chdir(start)
    study = load_study(["digits_quick"], [])
    store = StudyDir(out)
    store.open(study.fingerprint(), study.identity(), {
        "files": invocation_files(["digits_quick"]), "overrides": [], "placements": study.placements,
        "seeds": study.seeds, "profile_only": study.profile_only})
    store.close()
    monkeypatch.chdir(elsewhere)
    resumed = prepare_study([], [], None, None, None, None, out, True, None, False)[2]
    assert resumed.fingerprint() == study.fingerprint()


class _Stop(Exception):
    pass


def test_run_ablation_records_the_preset_name(tmp_path, monkeypatch):
    from fmb.ablation import sweep

    recorded = {}

    def record(self, fingerprint, identity, invocation):
        recorded.update(invocation)
        raise _Stop

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(StudyDir, "open", record)
    monkeypatch.setattr(sweep, "decide_study_auto", lambda study, stored: {}, raising=False)
    with pytest.raises(_Stop):
        sweep.run_ablation(["digits_quick"], [], out=tmp_path / "study", profile_only=True)
    assert json.loads(json.dumps(recorded["files"])) == ["digits_quick"]

"""What the dashboard command writes into the study: metric name, notes, figures; and how it binds."""

from __future__ import annotations

import json
import urllib.request

from optuna.artifacts import get_all_artifact_meta
from optuna_dashboard import save_note
from optuna_dashboard._note import get_note_from_system_attrs
from review_builder import standin_score

from search import trial_record as record
from search.cli import build_parser
from search.review import load_run, pick_trial, trial_recipe
from search.review.dashboard import CATEGORIES_FIGURE_ID, WEIGHTS_FIGURE_ID, DashboardServer, annotate_study


def _system(study):
    return study._storage.get_study_system_attrs(study._study_id)


def test_annotate_writes_notes_figures_and_metric_name(run_copy):
    study = load_run(run_copy).open_study()
    best_number = annotate_study(study)
    assert best_number == pick_trial(study, "best").number
    assert study.metric_names == ["tag_recall"]
    attrs = _system(study)
    best = pick_trial(study, "best")
    note = get_note_from_system_attrs(attrs, best.trial_id)["body"]
    expected = standin_score(trial_recipe(best))  # recomputed from the recipe, not read back
    assert f"## Trial {best.number}: tag_recall {expected['value']:.3f}" in note
    for cat, value in expected["categories"].items():
        assert f"| {cat} | {value:.3f} |" in note
    assert "parent:a" in note and "parent:b" in note
    assert "sources" not in note and "toyworld" in get_note_from_system_attrs(attrs, None)["body"]
    for figure_id in (WEIGHTS_FIGURE_ID, CATEGORIES_FIGURE_ID):
        chunks = [v for k, v in sorted(attrs.items()) if k.startswith(f"dashboard:plot_data:{figure_id}:")]
        assert chunks and json.loads("".join(chunks))["data"]


def test_annotate_refreshes_its_own_notes(run_copy):
    run = load_run(run_copy)
    study = run.open_study()
    annotate_study(study)
    trial = study.trials[5]
    # a baseline scored after the note was written (a retried uniform merge, with other scores)
    late = study.ask()
    record.write(late, baseline="uniform", search=0.123,
                 search_categories=dict.fromkeys(trial.user_attrs["categories"], 0.123))
    study.tell(late, 0.123)
    annotate_study(study)
    note = get_note_from_system_attrs(_system(study), trial._trial_id)
    assert "| 0.123 |" in note["body"] and note["version"] == 2
    annotate_study(study)  # nothing changed: no new version
    assert get_note_from_system_attrs(_system(study), trial._trial_id)["version"] == 2


def test_annotate_keeps_a_note_the_user_edited(run_copy):
    study = load_run(run_copy).open_study()
    trial = study.trials[4]
    save_note(study, "my own study note")
    from optuna_dashboard._note import save_note_with_version

    save_note_with_version(study._storage, study._study_id, trial._trial_id, 1, "looks oversaturated")
    annotate_study(study)
    attrs = _system(study)
    assert get_note_from_system_attrs(attrs, trial._trial_id)["body"] == "looks oversaturated"
    assert get_note_from_system_attrs(attrs, None)["body"] == "my own study note"


def test_server_serves_the_api_and_artifacts(standin_run):
    run = load_run(standin_run)
    with DashboardServer(run, port=0, refresh_s=3600) as server:
        base = f"http://127.0.0.1:{server.port}"
        studies = json.load(urllib.request.urlopen(f"{base}/api/studies", timeout=30))
        assert [s["study_name"] for s in studies["study_summaries"]] == [run.study_name]
        meta = json.load(urllib.request.urlopen(f"{base}/api/meta", timeout=30))
        assert meta["artifact_is_available"] is True
        study = run.open_study()
        best = study.trials[pick_trial(study, "best").number]
        (artifact,) = get_all_artifact_meta(best, storage=study._storage)
        url = f"{base}/artifacts/{study._study_id}/{best._trial_id}/{artifact.artifact_id}"
        with urllib.request.urlopen(url, timeout=30) as response:  # the loop uploads WebP contact sheets
            assert response.headers["Content-Type"] == "image/webp"
            head = response.read(12)
            assert head[:4] == b"RIFF" and head[8:12] == b"WEBP"


def test_dashboard_binds_localhost_by_default_and_warns_elsewhere(standin_run, capsys, monkeypatch):
    args = build_parser().parse_args(["dashboard", str(standin_run)])
    assert args.host == "127.0.0.1" and args.port == 8080

    started = []

    def fake_start(self):
        started.append((self.host, self.port))
        raise KeyboardInterrupt  # stands for the user's Ctrl-C right after start

    monkeypatch.setattr(DashboardServer, "start", fake_start)
    args = build_parser().parse_args(["dashboard", str(standin_run), "--host", "0.0.0.0", "--port", "0"])
    assert args.handler(args) == 0
    captured = capsys.readouterr()
    assert "warning: the dashboard is bound to 0.0.0.0" in captured.err and started[0][0] == "0.0.0.0"

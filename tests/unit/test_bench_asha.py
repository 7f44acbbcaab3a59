"""bench/asha.py's set-up, without Ray: the grid and ASHA run the same configurations to the same
epochs, and the method paragraph states the settings (not the result dicts)."""

from __future__ import annotations

import itertools

from pipeline.tune.spec import load_tune_spec


def test_grid_and_asha_files_run_the_same_configurations_to_max_t(tmp_path):
    from bench.asha import EPOCHS, HIDDEN, HIDDEN_QUICK, LRS, LRS_QUICK, _router_file, asha_settings, plan_of

    for quick, hidden, lrs in ((True, HIDDEN_QUICK, LRS_QUICK), (False, HIDDEN, LRS)):
        plan, epochs = plan_of(quick), EPOCHS[quick]
        assert sorted(plan["model.hidden_size"]) == hidden and sorted(plan["optim.lr"]) == sorted(lrs)
        assert plan == plan_of(quick)  # seeded: every run the same order
        grid = load_tune_spec(_router_file(str(tmp_path), plan, epochs, None))
        asha = load_tune_spec(_router_file(str(tmp_path), plan, epochs, asha_settings(quick)))
        assert grid.plan == asha.plan and len(grid.plan) == len(list(itertools.product(*plan.values())))
        assert grid.tune.asha is None and grid.config.train.epochs == epochs
        assert asha.tune.asha.max_t == asha.config.train.epochs == epochs
        assert grid.config.train.patience == asha.config.train.patience == 0  # no early stopping but ASHA's
        assert grid.tune.num_samples == asha.tune.num_samples == 1
    assert len(plan_of(False)["optim.lr"]) * len(HIDDEN) >= 24  # ASHA saves with many configurations


def test_method_names_the_settings_not_the_results():
    from bench.asha import _method, asha_settings, plan_of

    trial = {
        "trial": "t",
        "overrides": {},
        "metric": 0.9,
        "epochs": 3,
        "stopped_early": True,
        "history": [0.9],
    }
    exp = {"seconds": 100.0, "best": 0.9, "trial_epochs": 30, "reported_epochs": 20, "trials": [trial] * 12}
    a = {
        "rows": 8000,
        "epochs": 27,
        "plan": plan_of(False),
        "asha_settings": asha_settings(False),
        "grid": exp,
        "asha": exp,
    }
    text = _method(a, {"epochs": 12, "num_samples": 1}, 12)
    assert "grace_period 1" in text and "reduction_factor 3" in text and "max_t 27" in text
    assert "'trials'" not in text and "history" not in text and len(text) < 2500

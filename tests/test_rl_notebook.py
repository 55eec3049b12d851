"""The RL results notebook, shipped with its pictures, and run end to end on a small rl_tag run (the Python API in a
notebook: experiments.api.load)."""

from __future__ import annotations

import pytest

pytest.importorskip("nbclient")

from tests.helpers.paths import REPO_ROOT, assert_notebook_is_shipped_whole, execute_results_notebook  # noqa: E402

NOTEBOOK = REPO_ROOT / "visualization" / "rl.ipynb"
FIGURES = ("notebook_rl_reward.png", "notebook_rl_agreement.png", "notebook_rl_team.gif")


def test_rl_notebook_is_shipped_with_its_title_and_pictures():
    assert_notebook_is_shipped_whole(NOTEBOOK)


@pytest.mark.integration
def test_rl_notebook_draws_rewards_agreement_and_the_team_of_a_small_run(tmp_path, monkeypatch):
    from experiments import api
    from tests.helpers.rl import TINY

    out = api.run(TINY, output_dir=tmp_path / "out")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    printed = execute_results_notebook(NOTEBOOK, out, FIGURES, monkeypatch, timeout=300)
    assert "rl_tiny: completed" in printed
    from PIL import Image

    with Image.open(out / "figures" / "notebook_rl_team.gif") as gif:
        assert gif.n_frames == TINY["experiment"]["episode_steps"] + 1

"""Where figures go: a quick-profile run, by any route, leaves the committed figures/ alone."""

import pytest

from lowrank import settings


@pytest.mark.parametrize("profile", ["quick", "full"])
def test_lowrank_figures_wins_whatever_the_profile(monkeypatch, tmp_path, profile):
    monkeypatch.setenv("LOWRANK_PROFILE", profile)
    monkeypatch.setenv("LOWRANK_FIGURES", str(tmp_path))
    assert settings.figure_path("x.png") == tmp_path / "x.png"


def test_the_quick_profile_never_writes_the_committed_figures(monkeypatch, tmp_path):
    monkeypatch.delenv("LOWRANK_FIGURES", raising=False)
    monkeypatch.setattr(settings, "QUICK_FIGURES", tmp_path / "build" / "quick" / "figures")  # not the real build/
    monkeypatch.setenv("LOWRANK_PROFILE", "quick")
    path = settings.figure_path("01_update_spectrum.png")
    repository_figures = settings.REPOSITORY / "figures"
    assert path.parent == tmp_path / "build" / "quick" / "figures" and path.parent.is_dir()
    assert repository_figures not in path.parents


def test_the_full_profile_writes_the_committed_figures(monkeypatch):
    monkeypatch.delenv("LOWRANK_FIGURES", raising=False)
    monkeypatch.setenv("LOWRANK_PROFILE", "full")
    assert settings.figure_path("x.png") == settings.REPOSITORY / "figures" / "x.png"


def test_the_phase_log_is_read_here(monkeypatch, tmp_path):
    monkeypatch.delenv("LOWRANK_PHASE_LOG", raising=False)
    assert settings.phase_log_path() is None
    monkeypatch.setenv("LOWRANK_PHASE_LOG", str(tmp_path / "phases.json"))
    assert settings.phase_log_path() == tmp_path / "phases.json"

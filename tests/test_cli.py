from textlatent.checkpoint import model_params, write_checkpoint
from textlatent.cli import main


def test_checkpoint_command_describes_a_checkpoint(tmp_path, f32_model, capsys):
    write_checkpoint(tmp_path / "ck", model_params(f32_model))
    main(["checkpoint", str(tmp_path / "ck")])
    out = capsys.readouterr().out
    assert "50 leaves" in out
    assert "paligemma_variant = 'tiny'" in out
    assert "siglip_variant = 'tiny/14'" in out


def test_demo_runs_end_to_end(tmp_path, capsys):
    main(["demo", "--out", str(tmp_path), "--repeats", "1"])
    out = capsys.readouterr().out
    assert "actions: shape (50, 7), dtype float64" in out
    assert (tmp_path / "checkpoint" / "params").is_dir()
    assert (tmp_path / "checkpoint" / "assets" / "physical-intelligence" / "libero" / "norm_stats.json").exists()
    assert "random" in out

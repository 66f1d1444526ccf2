import json

import pytest

from ffnlab.cli import main


def test_variants_json(capsys):
    assert main(["variants", "--dim", "4096", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by = {r["name"]: r for r in rows}
    assert len(rows) == 18 and [r["name"] for r in rows][-2:] == ["qgeglu", "clamped_swiglu"]
    assert by["swiglu"]["hidden"] == 11008 and by["relu"]["hidden"] == 16384


def test_variants_table(capsys):
    assert main(["variants", "--dim", "64", "--variants", "relu,swiglu"]) == 0
    out = capsys.readouterr().out
    assert "relu" in out and "swiglu" in out and "geglu" not in out


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["variants", "--variants", "swigl"], "did you mean 'swiglu'"),
        (["variants", "--dim", "0"], "--dim must be a positive integer"),
        (["variants", "--dim", "abc"], "invalid int value"),
        (["nonsense"], "invalid choice"),
    ],
)
def test_usage_errors_one_line_exit_2(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_plot_writes_files(tmp_path, capsys):
    assert main(["plot", "--out", str(tmp_path)]) == 0
    for stem in ("activations", "derivatives", "swish_beta", "gelu_error"):
        assert (tmp_path / f"{stem}.png").stat().st_size > 1000
        assert (tmp_path / f"{stem}.svg").exists()


def test_plot_out_is_a_file(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["plot", "--out", str(f)]) == 2
    assert "is a file" in capsys.readouterr().err

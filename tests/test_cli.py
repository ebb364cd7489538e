"""The regnet command: zoo, info, sample, fit, train, sweep, and its error messages."""

import os
import subprocess
import sys

import pytest

from regnet.cli import amount, main
from test_train import one_thread  # noqa: F401  (an autouse fixture)


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_zoo_lists_all_24_models_next_to_pycls_figures(capsys):
    code, out, _ = run(capsys, "zoo")
    rows = [line for line in out.splitlines() if line.startswith("regnet")]
    assert code == 0 and len(rows) == 24
    assert all(line.endswith(" ok") for line in rows)
    header = out.splitlines()[2].split()
    assert header[:4] == ["model", "pycls", "name", "depths"] and "(pycls)" in header
    assert "regnetx_002  RegNetX-200MF  1 1 4 7   24 56 152 368" in out
    code, out, _ = run(capsys, "zoo", "--resolution", 160)
    assert "(pycls)" not in out and len([line for line in out.splitlines() if line.startswith("regnet")]) == 24


def test_info_shows_the_stage_table(capsys):
    code, out, _ = run(capsys, "info", "regnety_016", "--resolution", 256)
    assert code == 0 and "RegNetY-1.6GF" in out and "wa=20.71" in out
    s1 = next(line.split() for line in out.splitlines() if line.startswith("s1"))
    assert s1 == ["s1", "2", "48", "24", "2", "2", "8/12", "64x64"]
    assert "at 256x256, 1000 classes: flops 2.105 G" in out
    for name in ("RegNetX-200MF", "regnet_x_400mf"):
        assert run(capsys, "info", name)[0] == 0


def test_unknown_names_and_bad_arguments_list_the_choices(capsys):
    code, _, err = run(capsys, "info", "regnetx_999")
    assert code == 2 and "unknown: expected one of ['regnetx_002'" in err and "RegNetY-32GF" in err
    with pytest.raises(SystemExit) as e:
        main(["sample", "AnyNetX_Z"])
    assert e.value.code == 2
    assert "expected one of ['AnyNetX_A', 'AnyNetX_B', 'AnyNetX_C', 'AnyNetX_D', 'AnyNetX_E', 'RegNetX', 'RegNetY']" \
        in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["frobnicate"])
    assert "choose from 'zoo', 'info', 'sample', 'fit', 'train', 'sweep'" in capsys.readouterr().err


def test_sample_is_seeded_and_respects_the_regime(capsys):
    code, out, _ = run(capsys, "sample", "RegNetX", "--n", 5, "--flops", "360M", "400M", "--seed", 1)
    assert code == 0 and "within flops 360M-400M" in out
    rows = [line.split() for line in out.splitlines()[4:9]]
    assert [r[0] for r in rows] == ["0", "1", "2", "3", "4"]
    assert all(0.36 <= float(r[-3]) <= 0.4 for r in rows)
    again = run(capsys, "sample", "RegNetX", "--n", 5, "--flops", "360", "400", "--seed", 1)[1]
    assert again.splitlines()[:9] == out.splitlines()[:9]
    code, out, _ = run(capsys, "sample", "AnyNetX_C", "--n", 3)
    assert code == 0 and "3 models sampled" in out


def test_amounts():
    assert amount("0.4G") == 4e8 and amount("360") == 3.6e8 and amount("500k") == 5e5
    with pytest.raises(Exception, match="expected e.g. 360M"):
        amount("lots")


def test_fit(capsys):
    code, out, _ = run(capsys, "fit", "48", "104x3", "208x6", "440x6")
    assert code == 0 and out.startswith("16 blocks: w0=48") and "fit error 0.0000" in out
    with pytest.raises(SystemExit):
        main(["fit", "48", "-3"])


def test_train_on_synthetic_data(capsys, tmp_path):
    ckpt = tmp_path / "r.pt"
    code, out, _ = run(capsys, "train", "--synthetic", "--model", "regnetx_002", "--epochs", 1, "--image-size", 16,
                       "--train-size", 32, "--test-size", 16, "--batch-size", 16, "--ckpt", ckpt, "--quiet")
    assert code == 0 and "done: 1 epochs" in out and ckpt.exists() and (tmp_path / "r.csv").exists()
    code, _, err = run(capsys, "train", "--synthetic", "--epochs", 0, "--ckpt", ckpt)
    assert code == 2 and "TrainingConfig.max_epochs=0 is out of range: expected an integer >= 1" in err
    code, _, err = run(capsys, "train", "--data", tmp_path / "missing", "--ckpt", ckpt)
    assert code == 2 and "expected an ImageFolder root with train/ and val/" in err


def test_train_on_an_image_folder(capsys, tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for label, colour in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
            os.makedirs(tmp_path / split / label)
            for i in range(4):
                Image.new("RGB", (20, 20), colour).save(tmp_path / split / label / f"{i}.png")
    code, out, _ = run(capsys, "train", "--data", tmp_path, "--model", "regnetx_002", "--epochs", 1,
                       "--image-size", 16, "--batch-size", 4, "--ckpt", tmp_path / "r.pt", "--quiet")
    assert code == 0 and "done: 1 epochs" in out
    assert (tmp_path / "r.csv").read_text().count("\n") == 2


def test_sweep_on_synthetic_data(capsys, tmp_path):
    args = ["sweep", "RegNetX", "--n", 2, "--synthetic", "--flops", 0, "60M", "--epochs", 1, "--train-size", 64,
            "--test-size", 32, "--batch-size", 32, "--precise-bn", 64, "--out", tmp_path]
    code, out, _ = run(capsys, *args)
    assert code == 0 and f"EDF of RegNetX: {tmp_path / 'edf.png'}" in out
    assert sorted(os.listdir(tmp_path / "RegNetX" / "results")) == ["00000.json", "00001.json"]
    args[3] = 3
    code, _, err = run(capsys, *args)
    assert code == 2 and "describes another sweep, with n=2" in err


def test_python_dash_m_regnet():
    env = {**os.environ, "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-m", "regnet", "--help"], capture_output=True, text=True, env=env)
    assert done.returncode == 0 and all(f"    {c} " in done.stdout for c in ("zoo", "info", "sample", "fit", "sweep"))

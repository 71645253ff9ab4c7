//! Issue 13, item 2: every file `gradsweep local` writes reads as it is in
//! the tools researchers use: `pandas.read_csv` for results.csv, runs.csv
//! and epochs.csv, `numpy.load` for the saved gradients, `json.load` for
//! results.json. Runs Python when it has pandas and numpy; CI installs them
//! and sets `GRADSWEEP_REQUIRE_PYTHON=1`, so there the test cannot skip.

use std::process::{Command, Stdio};

use gradsweep_tests::bin;

const CHECK: &str = r#"
import json, pathlib, sys
import numpy as np
import pandas as pd

out = pathlib.Path(sys.argv[1])
res = pd.read_csv(out / "results.csv")
assert len(res) == 4, res
for col in ["lr", "batch_size", "rank_lo", "rank_hi", "trace", "model"]:
    assert col in res.columns, (col, list(res.columns))
assert res["rank_lo"].le(res["rank_hi"]).all()
assert sorted(res["model"].unique()) == ["mlp:64-12-10", "mlp:64-8-10"], res["model"]
assert res["lr"].dtype.kind == "f" and res["batch_size"].dtype.kind == "i"

runs = pd.read_csv(out / "runs.csv")
assert len(runs) == 8 and (runs["state"] == "completed").all(), runs
assert runs["seed"].dtype.kind == "i" and runs["duration_s"].dtype.kind == "f"

ep = pd.read_csv(out / "epochs.csv")
assert len(ep) == 8 * 2, ep
assert ep.groupby("run")["epoch"].apply(list).map(lambda e: e == [1, 2]).all()
last = ep[ep["epoch"] == 2]
assert last["test_accuracy"].between(0, 1).all() and ep[ep["epoch"] == 1]["test_accuracy"].isna().all()
assert ep["train_loss"].dtype.kind == "f"

doc = json.load(open(out / "results.json"))
assert doc["provenance"]["runs"]["completed"] == 8, doc["provenance"]
assert doc["provenance"]["ended_at_ms"] >= doc["provenance"]["submitted_at_ms"]

grads = sorted((out / "gradients").glob("*.gradients.npy"))
assert len(grads) == 8, grads
for g in grads:
    a = np.load(g)
    w = np.load(str(g).replace(".gradients.npy", ".weights.npy"))
    assert a.dtype == np.float32 and a.ndim == 2 and a.shape[0] == 5 and a.shape[1] == w.shape[0], (g, a.shape, w.shape)
    assert np.isfinite(a).all()
spectra = sorted((out / "spectra").glob("*.spectrum.npy"))
# Per run: its probe and its pooled spectrum; per cell: the seeds merged.
assert len(spectra) == 8 * 2 + 4, spectra
for f in spectra:
    s = np.load(f)
    assert s.dtype == np.float64 and s.ndim == 2 and s.shape[1] == 2 and s.shape[0] >= 1, (f, s.shape)
    assert (s[:, 0] <= s[:, 1]).all() and (np.diff(s[:, 0]) <= 0).all(), f
assert (out / "spectra" / "c0-merged.spectrum.npy").exists()
print("ok", len(res), len(runs), len(ep), len(grads), len(spectra))
"#;

fn python_with_pandas() -> bool {
    Command::new("python3")
        .args(["-c", "import numpy, pandas"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn pandas_and_numpy_read_every_exported_file_as_it_is() {
    if !python_with_pandas() {
        assert!(
            std::env::var_os("GRADSWEEP_REQUIRE_PYTHON").is_none(),
            "GRADSWEEP_REQUIRE_PYTHON is set, but python3 cannot import numpy and pandas"
        );
        eprintln!("skipped: python3 with numpy and pandas is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let grid = "[sweep]\nname = \"exports\"\nseeds = [0, 1]\n[train]\ndataset = \"digits\"\nepochs = 2\nlr = 0.05\n\
                [probe]\nevery_epochs = 2\nsketch_rank = 8\nsave_gradients = 5\n\
                [grid]\nmodel = [\"mlp:64-8-10\", \"mlp:64-12-10\"]\nbatch_size = [16, 64]\n";
    std::fs::write(dir.path().join("grid.toml"), grid).unwrap();
    let o = Command::new(bin("gradsweep"))
        .args(["local", "grid.toml", "--slots", "2"])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = dir.path().join("gradsweep-out/exports");
    let o = Command::new("python3").args(["-c", CHECK, out.to_str().unwrap()]).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success() && text.starts_with("ok 4 8 16 8 20"), "{text}");
}

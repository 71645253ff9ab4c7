//! Issue 4, acceptance 5: `gradsweep analyze` on NPY files laid out as
//! numpy writes them (written here without Python), and clear errors for
//! malformed ones.

use gradsweep_shared::npy;
use gradsweep_tests::cli;

fn run(args: &[&str]) -> (bool, String, String) {
    let o = cli(args);
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn analyze_grads_and_trajectory_from_npy() {
    let dir = tempfile::tempdir().unwrap();
    // Gradients of rank 2 in d = 10 (plus a mean), as f32.
    let (n, d) = (200, 10);
    let data: Vec<f64> = (0..n)
        .flat_map(|i| {
            let (a, b) = (((i * 37) % 17) as f64 - 8.0, ((i * 11) % 13) as f64 - 6.0);
            (0..d).map(move |j| a * (j as f64 + 1.0) + b * if j % 2 == 0 { 1.0 } else { -1.0 } + 0.5)
        })
        .collect();
    let g = dir.path().join("grads.npy");
    std::fs::write(&g, npy::write(n, d, &data, true)).unwrap();
    let (ok, out, err) = run(&["analyze", "grads", g.to_str().unwrap(), "--format", "json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["method"], "exact");
    // Exact: the certified bracket is one number; the estimate sits in it.
    assert_eq!((v["spectrum"]["rank"]["lo"].as_f64(), v["spectrum"]["rank"]["hi"].as_f64()), (Some(2.0), Some(2.0)));
    assert_eq!(v["spectrum"]["rank"]["estimate"], 2.0);
    assert_eq!(v["spectrum"]["rank_resolved"], true);
    assert_eq!(v["spectrum"]["n"], 200);
    // The same statistics as one CSV row: brackets as `_lo`/`_hi` columns.
    let (ok, csv, err) =
        run(&["analyze", "grads", g.to_str().unwrap(), "--format", "csv", "--rank-threshold-abs", "1e-6"]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 2, "{csv}");
    let (head, row): (Vec<&str>, Vec<&str>) = (lines[0].split(',').collect(), lines[1].split(',').collect());
    assert_eq!(head.len(), row.len(), "{csv}");
    let col = |n: &str| row[head.iter().position(|h| *h == n).unwrap_or_else(|| panic!("no {n}: {csv}"))];
    assert_eq!((col("method"), col("n"), col("d")), ("exact", "200", "10"));
    assert_eq!((col("rank_lo"), col("rank_hi"), col("rank_resolved")), ("2", "2", "true"));
    assert_eq!((col("rank_abs_1e-6_lo"), col("rank_abs_1e-6_hi")), ("2", "2"));
    assert_eq!(col("trace").parse::<f64>().unwrap(), v["spectrum"]["trace"].as_f64().unwrap());
    let (ok, out, _) = run(&["analyze", "grads", g.to_str().unwrap(), "--exact-max-dim", "4", "--sketch-rank", "4"]);
    assert!(ok && out.contains("sketch") && out.contains("rank"), "{out}");
    // User thresholds: rank 2 above any small absolute or relative threshold;
    // the brackets are exact, so each reads as one number.
    let (ok, out, err) =
        run(&["analyze", "grads", g.to_str().unwrap(), "--rank-threshold-abs", "1e-6", "--rank-threshold-rel", "1e-5"]);
    assert!(ok && out.contains("rank (> 1e-6)       2\n") && out.contains("rank (λ_max·1e-5)   2\n"), "{out}{err}");
    let (ok, _, err) = run(&["analyze", "grads", g.to_str().unwrap(), "--rank-threshold-abs", "0"]);
    assert!(!ok && err.contains("absolute rank threshold 0 is not a positive number"), "{err}");

    // A rotating trajectory in 2 of 30 columns, as f64.
    let t = 5000;
    let traj: Vec<f64> = (0..t)
        .flat_map(|i| {
            let a = 0.05 * i as f64;
            (0..30).map(move |j| match j {
                0 => a.cos(),
                1 => a.sin(),
                _ => 0.0,
            })
        })
        .collect();
    let p = dir.path().join("traj.npy");
    std::fs::write(&p, npy::write(t, 30, &traj, false)).unwrap();
    let (ok, out, err) =
        run(&["analyze", "trajectory", p.to_str().unwrap(), "--format", "json", "--projections", "30"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rate = v["drift"]["area_rate"].as_f64().unwrap();
    assert!((rate - 0.5 * 0.05f64.sin()).abs() < 1e-3, "{rate}");
    let (ok, csv, err) = run(&["analyze", "trajectory", p.to_str().unwrap(), "--format", "csv", "--projections", "30"]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = csv.lines().collect();
    let (head, row): (Vec<&str>, Vec<&str>) = (lines[0].split(',').collect(), lines[1].split(',').collect());
    assert_eq!((lines.len(), head.len()), (2, row.len()), "{csv}");
    let at = head.iter().position(|h| *h == "area_rate").unwrap();
    assert_eq!(row[at].parse::<f64>().unwrap(), rate);
    // A rotation of period 126 steps is slower than the default window of
    // 64: every format says so.
    assert_eq!(row[head.iter().position(|h| *h == "warnings").unwrap()], "peak_at_lowest_bin", "{csv}");
    assert_eq!(v["warnings"][0]["kind"], "peak_at_lowest_bin", "{v}");
    let (ok, out, _) = run(&["analyze", "trajectory", p.to_str().unwrap()]);
    assert!(ok && out.contains("random projections") && out.contains("MSD"), "{out}");
    assert!(out.contains("warning: the power rises") && out.contains("a longer --psd-window may"), "{out}");
    assert!(
        out.contains("cycling frequency") && out.contains("autocorrelation(τ)") && out.contains("peak at"),
        "{out}"
    );
    let (ok, _, err) = run(&["analyze", "trajectory", p.to_str().unwrap(), "--psd-window", "100"]);
    assert!(!ok && err.contains("--psd-window must be 0 or a power of two"), "{err}");
}

#[test]
fn malformed_npy_files_are_rejected_with_clear_messages() {
    let dir = tempfile::tempdir().unwrap();
    let good = npy::write(3, 2, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], false);
    let header_swap = |from: &str, to: &str| {
        let hl = u16::from_le_bytes([good[8], good[9]]) as usize;
        let h = std::str::from_utf8(&good[10..10 + hl]).unwrap().replace(from, to);
        let mut b = good[..10].to_vec();
        b.extend(h.bytes());
        b.extend(&good[10 + hl..]);
        b
    };
    let mut truncated = good.clone();
    truncated.truncate(good.len() - 5);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("bad-header.npy", b"not numpy at all".to_vec(), "bad magic"),
        ("dtype.npy", header_swap("<f8", "<i8"), "dtype <i8 is not supported"),
        ("rank.npy", header_swap("(3, 2)", "(6,)  "), "need a 2-d array"),
        ("truncated.npy", truncated, "truncated data"),
        ("nan.npy", npy::write(3, 2, &[1.0, 2.0, f64::NAN, 4.0, 5.0, 6.0], false), "non-finite value"),
    ];
    for (name, bytes, words) in cases {
        let f = dir.path().join(name);
        std::fs::write(&f, bytes).unwrap();
        for kind in ["grads", "trajectory"] {
            let (ok, _, err) = run(&["analyze", kind, f.to_str().unwrap()]);
            assert!(!ok, "{name} {kind} must fail");
            assert!(err.contains(name) && err.contains(words), "{name} {kind}: {err}");
        }
    }
}

/// Issue 11, item 6: `[probe] save_gradients` makes `local` write each
/// probe's first rows and its weights as NPY files next to the results;
/// `gradsweep analyze grads` on a file reproduces that probe's statistics
/// for those rows (all of them here: the same n, the exact trace, a rank
/// inside the probe's certified bracket), across probe shards.
#[test]
fn saved_gradients_reproduce_each_probe() {
    let dir = tempfile::tempdir().unwrap();
    let grid = gradsweep_tests::grids::mlp("saved", "[0]", 2, "", 2)
        .replace("sketch_rank = 16", "sketch_rank = 16\nsave_gradients = 100000\nshard_samples = 300");
    let file = dir.path().join("grid.toml");
    std::fs::write(&file, &grid).unwrap();
    let out = dir.path().join("out");
    let (ok, _, err) = run(&["local", file.to_str().unwrap(), "--workers", "1", "--out", out.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(err.contains("wrote 8 gradient and weight files (NPY)"), "{err}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let mut checked = 0;
    for cell in json["cells"].as_array().unwrap() {
        let c = cell["index"].as_u64().unwrap();
        let probe = &cell["runs"][0]["probes"][0];
        let epoch = probe["meta"]["epoch"].as_u64().unwrap();
        let stem = out.join("gradients").join(format!("c{c}-s0-probe0-epoch{epoch}"));
        let weights = std::fs::read(stem.with_extension("weights.npy")).unwrap();
        assert!(String::from_utf8_lossy(&weights[..80]).contains("'shape': (1210,)"), "weights are a vector of d");
        let g = stem.with_extension("gradients.npy");
        let (ok, text, err) = run(&["analyze", "grads", g.to_str().unwrap(), "--format", "json"]);
        assert!(ok, "{err}");
        let got: serde_json::Value = serde_json::from_str(&text).unwrap();
        let (got, want) = (&got["spectrum"], &probe["spectrum"]);
        assert_eq!(got["n"], want["n"], "cell {c}: every row kept");
        assert_eq!(probe["meta"]["saved_rows"], want["n"]);
        let (t, w) = (got["trace"].as_f64().unwrap(), want["trace"].as_f64().unwrap());
        assert!((t - w).abs() <= 1e-9 * w, "cell {c}: trace {t} from the file, {w} from the probe");
        let rank = got["rank"]["lo"].as_f64().unwrap();
        let (lo, hi) = (want["rank"]["lo"].as_f64().unwrap(), want["rank"]["hi"].as_f64().unwrap());
        assert!(lo <= rank && rank <= hi, "cell {c}: exact rank {rank} outside the probe's [{lo}, {hi}]");
        checked += 1;
    }
    assert_eq!(checked, 4);
}

/// Issue 13, item 6: a gradient file with no rows is an error naming the
/// file, not a table of statistics.
#[test]
fn analyze_grads_refuses_a_file_without_samples() {
    let dir = tempfile::tempdir().unwrap();
    for (rows, name) in [(0usize, "empty.npy"), (1, "one.npy")] {
        let g = dir.path().join(name);
        std::fs::write(&g, npy::write(rows, 4, &vec![1.0; rows * 4], true)).unwrap();
        let (ok, out, err) = run(&["analyze", "grads", g.to_str().unwrap()]);
        assert!(!ok && out.is_empty(), "{out}");
        assert!(err.contains(name) && err.contains("at least 2 samples"), "{err}");
    }
}

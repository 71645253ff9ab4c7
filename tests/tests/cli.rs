//! The command line tells the truth (issue 13, item 5), checked on the real
//! `gradsweep` binary: connection flags only where a command connects, a
//! closed pipe ends quietly, a sweep name cannot lead out of the output
//! folder, `local` has `submit`'s run cap, and a changed grid under an
//! existing name never overwrites earlier results.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use gradsweep_tests::{bin, cli, grids};

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn help(args: &[&str]) -> String {
    let o = cli(&[args, &["--help"]].concat());
    assert!(o.status.success(), "{}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

const CONNECT: [&str; 4] = ["--coordinator", "--token-file", "--tls-ca", "--tls-domain"];

#[test]
fn connection_flags_appear_only_on_commands_that_connect() {
    for cmd in [&["analyze", "grads"][..], &["analyze", "trajectory"], &["models"], &["keys"], &["local"]] {
        let h = help(cmd);
        for flag in CONNECT {
            assert!(!h.contains(flag), "`gradsweep {} --help` offers {flag}:\n{h}", cmd.join(" "));
        }
    }
    for cmd in ["submit", "status", "watch", "results", "cancel", "workers", "drain"] {
        let h = help(&[cmd]);
        for flag in CONNECT {
            assert!(h.contains(flag), "`gradsweep {cmd} --help` lacks {flag}:\n{h}");
        }
    }
    // `serve` has its own token (the one it requires), no client settings.
    let h = help(&["serve"]);
    assert!(h.contains("--token-file") && h.contains("--tls-cert"), "{h}");
    for flag in ["--coordinator", "--tls-ca", "--tls-domain"] {
        assert!(!h.contains(flag), "`gradsweep serve --help` offers {flag}:\n{h}");
    }
}

/// `gradsweep models | head -c 100` used to panic (exit 101) once the reader
/// had gone. Here the reader is gone before the first write.
#[test]
fn a_closed_pipe_ends_the_command_quietly() {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let o = Command::new(bin("gradsweep"))
        .arg("models")
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && err.is_empty(), "{:?}: {err}", o.status);
}

fn local_in(cwd: &Path, args: &[&str]) -> Output {
    Command::new(bin("gradsweep"))
        .arg("local")
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .env_remove("GRADSWEEP_MAX_RUNS")
        .output()
        .unwrap()
}

#[test]
fn a_sweep_name_cannot_lead_out_of_the_output_folder() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path().join("a/b");
    std::fs::create_dir_all(&cwd).unwrap();
    let grid = cwd.join("grid.toml");
    std::fs::write(&grid, grids::tiny("../../escaped", 1)).unwrap();
    let o = local_in(&cwd, &["grid.toml"]);
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(t.contains("grid.toml:3:") && t.contains("output folder"), "names the file, line and why:\n{t}");
    assert!(!dir.path().join("escaped").exists() && !cwd.join("gradsweep-out").exists(), "nothing was created");
}

#[test]
fn local_applies_the_run_cap_before_starting_anything() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("grid.toml"), grids::tiny("capped", 1)).unwrap();
    let o = local_in(dir.path(), &["grid.toml", "--max-runs", "5"]);
    let t = text(&o);
    assert!(!o.status.success() && t.contains("8 runs, more than the limit of 5 (--max-runs)"), "{t}");
    assert!(!dir.path().join("gradsweep-out").exists(), "nothing was started:\n{t}");
}

/// Two different grids named alike: the second goes to its own folder and
/// the first's results are untouched; an explicit `--out` holding the other
/// grid is refused; the same grid again resumes (here: finds it complete)
/// in its own folder.
#[test]
fn a_changed_grid_under_an_existing_name_never_overwrites_earlier_results() {
    let dir = tempfile::tempdir().unwrap();
    let first = grids::tiny("alike", 1);
    let second = first.replace("epochs = 1", "epochs = 2");
    assert_ne!(first, second, "the grids differ");
    std::fs::write(dir.path().join("first.toml"), &first).unwrap();
    std::fs::write(dir.path().join("second.toml"), &second).unwrap();
    let out = dir.path().join("gradsweep-out");

    let o = local_in(dir.path(), &["first.toml"]);
    assert!(o.status.success(), "{}", text(&o));
    let kept = std::fs::read(out.join("alike/results.json")).unwrap();

    let o = local_in(dir.path(), &["second.toml"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("holds a different grid named \"alike\""), "{}", text(&o));
    assert!(out.join("alike-2/results.json").exists());
    assert_eq!(std::fs::read(out.join("alike/results.json")).unwrap(), kept, "the first grid's results stay");

    let o = local_in(dir.path(), &["second.toml", "--out", out.join("alike").to_str().unwrap()]);
    assert!(!o.status.success() && text(&o).contains("of a different grid"), "{}", text(&o));
    assert_eq!(std::fs::read(out.join("alike/results.json")).unwrap(), kept);

    let o = local_in(dir.path(), &["first.toml"]);
    assert!(o.status.success() && text(&o).contains("(resumed)"), "{}", text(&o));
    assert!(!out.join("alike-3").exists(), "the same grid finds its own folder");
}

/// The README's list of flags that read an environment variable is exactly
/// what the binaries' `--help` texts show as `[env: …]`.
#[test]
fn the_environment_variables_the_readme_lists_are_the_ones_the_flags_read() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let start = readme.find("The flags a deployment sets once").expect("the README's paragraph");
    let listed = &readme[start..start + readme[start..].find("Beside them").expect("its end")];
    let names = |t: &str| -> std::collections::BTreeSet<String> {
        t.split(|c: char| !(c.is_ascii_uppercase() || c == '_'))
            .filter(|w| w.starts_with("GRADSWEEP_") && w.len() > "GRADSWEEP_".len())
            .map(str::to_string)
            .collect()
    };
    let mut helps = String::new();
    let commands: [&[&str]; 12] = [
        &["serve"],
        &["submit"],
        &["status"],
        &["watch"],
        &["results"],
        &["cancel"],
        &["workers"],
        &["drain"],
        &["local"],
        &["models"],
        &["analyze", "grads"],
        &["analyze", "trajectory"],
    ];
    for cmd in commands {
        helps.push_str(&help(cmd));
    }
    let o = Command::new(bin("gradsweep-worker")).arg("--help").output().unwrap();
    helps.push_str(&String::from_utf8_lossy(&o.stdout));
    let shown: String =
        helps.split("[env: ").skip(1).map(|t| t.split('=').next().unwrap_or("").to_string() + " ").collect();
    assert_eq!(names(listed), names(&shown));
}

/// Issue 13, item 5: every command that prints data takes the same
/// `--format` values.
#[test]
fn every_format_flag_takes_table_csv_and_json() {
    let commands: [&[&str]; 7] = [
        &["status", "x"],
        &["results", "x"],
        &["runs", "x"],
        &["workers"],
        &["analyze", "grads", "f.npy"],
        &["analyze", "trajectory", "f.npy"],
        &["keys"],
    ];
    let mut with_format = 0;
    for cmd in commands {
        if !help(&cmd[..cmd.len().min(2)].iter().copied().filter(|a| !a.contains('.') && *a != "x").collect::<Vec<_>>())
            .contains("--format <FORMAT>")
        {
            continue;
        }
        with_format += 1;
        // clap names the values it accepts when given one it does not.
        let o = cli(&[cmd, &["--format", "bogus"]].concat());
        let t = text(&o);
        assert!(!o.status.success() && t.contains("[possible values: table, csv, json]"), "{cmd:?}: {t}");
    }
    assert!(with_format >= 6, "{with_format}");
}

/// A grid whose data cannot be found, as a new user writes it.
fn missing_data_grid(dir: &Path) -> String {
    format!(
        "[sweep]\nname = \"nodata\"\nseeds = [0, 1]\n[train]\nmodel = \"mlp:784-16-10\"\ndataset = \"mnist\"\n\
         data_dir = \"{}\"\nepochs = 1\n[probe]\nevery_epochs = 1\n[grid]\nlr = [0.1]\n",
        dir.join("no-such-data").display()
    )
}

/// Issue 13, item 1: a failing data directory shows its reason in `local`,
/// `watch`, `status` and `runs`, and `local` and `watch` exit with code 3.
#[test]
fn failed_runs_are_shown_with_their_reason_everywhere_and_set_the_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("grid.toml"), missing_data_grid(dir.path())).unwrap();
    let o = local_in(dir.path(), &["grid.toml", "--workers", "1", "--slots", "1"]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(3), "{t}");
    assert!(t.contains("2 of 2 runs failed") && t.contains("2 × ") && t.contains("not found"), "{t}");
    assert!(t.contains("gradsweep runs nodata-"), "says where to look:\n{t}");

    let coord = gradsweep_tests::CoordinatorProc::start(&dir.path().join("serve.db"), 0, &[], dir.path());
    let addr = format!("127.0.0.1:{}", coord.port);
    let _w = gradsweep_tests::WorkerProc::start(&coord.url(), "w-nodata", 1, dir.path());
    let o = cli(&["submit", "--coordinator", &addr, dir.path().join("grid.toml").to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let sweep = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let o = cli(&["watch", "--coordinator", &addr, &sweep]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("not found"), "{}", text(&o));

    let o = cli(&["status", "--coordinator", &addr, &sweep]);
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("2 failed") && t.contains("2 × ") && t.contains("no-such-data"), "{t}");

    let o = cli(&["runs", "--coordinator", &addr, &sweep, "--format", "csv"]);
    assert!(o.status.success(), "{}", text(&o));
    let csv = String::from_utf8_lossy(&o.stdout).into_owned();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "run,cell,lr,seed,state,attempts,worker,duration_s,error", "one column per axis");
    assert_eq!(lines.len(), 3, "a row per run:\n{csv}");
    for l in &lines[1..] {
        assert!(l.contains(",failed,1,w-nodata,") && l.contains("no-such-data"), "{l}");
    }
    let o = cli(&["runs", "--coordinator", &addr, &sweep, "--state", "completed"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "no runs", "{}", text(&o));
    let o = cli(&["runs", "--coordinator", &addr, &sweep, "--format", "json", "--state", "failed"]);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)));
    assert_eq!(j.as_array().map(Vec::len), Some(2));
    assert_eq!(j[0]["params"]["lr"], 0.1);
    assert!(j[0]["duration_s"].as_f64().is_some_and(|d| d >= 0.0));
    let o = cli(&["runs", "--coordinator", &addr, &sweep, "--state", "broken"]);
    assert!(!o.status.success() && text(&o).contains("`broken` is not a run state"), "{}", text(&o));
}

/// Issue 13: a learning rate that blows up makes runs that diverge; they are
/// results, not failures (exit 0), and the table says "diverged".
#[test]
fn diverged_runs_say_so_in_the_table_and_are_not_failures() {
    let dir = tempfile::tempdir().unwrap();
    let grid = "[sweep]\nname = \"blowup\"\nseeds = [0, 1]\n[train]\nmodel = \"mlp:64-16-10\"\ndataset = \"digits\"\n\
                epochs = 3\n[probe]\nevery_epochs = 3\nsketch_rank = 8\n[grid]\nlr = [50.0]\n";
    std::fs::write(dir.path().join("grid.toml"), grid).unwrap();
    let o = local_in(dir.path(), &["grid.toml", "--slots", "1"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(String::from_utf8_lossy(&o.stdout).contains("2/2 (2 diverged)"), "{t}");
    // And in the CSV, a column of its own.
    let csv = std::fs::read_to_string(dir.path().join("gradsweep-out/blowup/results.csv")).unwrap();
    let (head, row): (Vec<&str>, Vec<&str>) =
        (csv.lines().next().unwrap().split(',').collect(), csv.lines().nth(1).unwrap().split(',').collect());
    let at = |n: &str| row[head.iter().position(|h| *h == n).unwrap()];
    assert_eq!((at("seeds_done"), at("seeds_diverged")), ("2", "2"), "{csv}");
}

/// Issue 13, item 2: results.csv has one column per axis (named by its
/// key) instead of a packed `params` string: every row splits into as
/// many fields as the header, and the values are the cells' own.
#[test]
fn results_csv_has_one_column_per_axis_and_no_packed_strings() {
    let dir = tempfile::tempdir().unwrap();
    let grid = "[sweep]\nname = \"axes\"\n[train]\ndataset = \"digits\"\nepochs = 1\nlr = 0.05\n\
                [probe]\nevery_epochs = 1\nsketch_rank = 8\n\
                [grid]\nmodel = [\"mlp:64-8-10\", \"mlp:64-12-10\"]\nmomentum = [0.0, 0.5]\n";
    std::fs::write(dir.path().join("grid.toml"), grid).unwrap();
    let o = local_in(dir.path(), &["grid.toml", "--slots", "1"]);
    assert!(o.status.success(), "{}", text(&o));
    let csv = std::fs::read_to_string(dir.path().join("gradsweep-out/axes/results.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    let head: Vec<&str> = lines[0].split(',').collect();
    assert_eq!(&head[head.len() - 2..], ["model", "momentum"], "{}", lines[0]);
    assert!(!head.contains(&"params"));
    let mut seen = vec![];
    for l in &lines[1..] {
        let f: Vec<&str> = l.split(',').collect();
        assert_eq!(f.len(), head.len(), "{l}");
        seen.push((f[head.len() - 2].to_string(), f[head.len() - 1].parse::<f64>().unwrap()));
    }
    let want: Vec<(String, f64)> =
        ["mlp:64-8-10", "mlp:64-12-10"].iter().flat_map(|m| [(m.to_string(), 0.0), (m.to_string(), 0.5)]).collect();
    assert_eq!(seen, want);
}

/// A coordinator on a database in `dir` (its address), and `grid` written
/// there and submitted to it (the sweep's id).
fn submitted(dir: &Path, grid: &str) -> (gradsweep_tests::CoordinatorProc, std::path::PathBuf, String, String) {
    let db = dir.join("state.db");
    let coord = gradsweep_tests::CoordinatorProc::start(&db, 0, &[], dir);
    let addr = format!("127.0.0.1:{}", coord.port);
    let file = dir.join("grid.toml");
    std::fs::write(&file, grid).unwrap();
    let o = cli(&["submit", "--coordinator", &addr, file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let sweep = String::from_utf8_lossy(&o.stdout).trim().to_string();
    (coord, db, addr, sweep)
}

/// Issue 13, item 3: `status`, `results` and `runs` read a database file
/// without a coordinator (even while one runs on it) and print exactly
/// what the coordinator answers; a file that is not a gradsweep database,
/// or none at all, is refused with its path.
#[test]
fn a_database_reads_the_same_without_a_coordinator() {
    let dir = tempfile::tempdir().unwrap();
    let (coord, db, addr, sweep) = submitted(dir.path(), &grids::tiny("offline", 2));
    let _w = gradsweep_tests::WorkerProc::start(&coord.url(), "w-db", 2, dir.path());
    let o = cli(&["watch", "--coordinator", &addr, &sweep]);
    assert!(o.status.success(), "{}", text(&o));

    let db = db.to_str().unwrap();
    for args in [
        vec!["results", sweep.as_str(), "--format", "json"],
        vec!["results", sweep.as_str(), "--format", "csv", "--rank-threshold-abs", "1e-6"],
        // From a coordinator the table is built as the cells stream in.
        vec!["results", sweep.as_str(), "--rank-threshold-rel", "0.01"],
        vec!["runs", sweep.as_str(), "--format", "csv"],
        vec!["status", sweep.as_str()],
        vec!["status", sweep.as_str(), "--format", "json"],
        vec!["status", "--format", "csv"],
    ] {
        let remote = cli(&[&args[..], &["--coordinator", &addr]].concat());
        let local = cli(&[&args[..], &["--db", db]].concat());
        assert!(remote.status.success() && local.status.success(), "{args:?}: {}\n{}", text(&remote), text(&local));
        assert!(!local.stdout.is_empty());
        assert_eq!(String::from_utf8_lossy(&local.stdout), String::from_utf8_lossy(&remote.stdout), "{args:?}");
    }
    // And the files `--out` writes, runs.csv among them.
    let (from_remote, from_db) = (dir.path().join("remote"), dir.path().join("db"));
    let o = cli(&["results", &sweep, "--out", from_remote.to_str().unwrap(), "--coordinator", &addr]);
    assert!(o.status.success(), "{}", text(&o));
    let o = cli(&["results", &sweep, "--out", from_db.to_str().unwrap(), "--db", db]);
    assert!(o.status.success(), "{}", text(&o));
    let spectra = |d: &Path| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(d.join("spectra"))
            .unwrap()
            .map(|e| format!("spectra/{}", e.unwrap().file_name().to_string_lossy()))
            .collect();
        names.sort();
        names
    };
    let files = spectra(&from_remote);
    assert!(files.len() >= 4, "{files:?}");
    assert_eq!(files, spectra(&from_db));
    for f in ["results.csv", "results.json", "runs.csv", "epochs.csv"].iter().map(|s| s.to_string()).chain(files) {
        let (a, b) = (std::fs::read(from_remote.join(&f)).unwrap(), std::fs::read(from_db.join(&f)).unwrap());
        assert!(!a.is_empty() && a == b, "{f} differs");
    }
    let o = cli(&["results", &sweep, "--db", db, "--coordinator", &addr]);
    assert!(!o.status.success() && text(&o).contains("cannot be used with"), "{}", text(&o));
    std::fs::write(dir.path().join("notes.txt"), "not a database").unwrap();
    for bad in [dir.path().join("notes.txt"), dir.path().join("missing.db")] {
        let o = cli(&["status", "--db", bad.to_str().unwrap()]);
        assert!(!o.status.success() && text(&o).contains(bad.to_str().unwrap()), "{}", text(&o));
    }
    assert!(!dir.path().join("missing.db").exists(), "reading creates nothing");
}

/// `results --out` and `report` from a coordinator stream the sweep past
/// twice and keep only the cells the report shows whole; on a sweep of
/// more cells than the report's table lists, every file they write is the
/// one written from the database with every cell held.
#[test]
fn exports_streamed_from_a_coordinator_are_those_of_every_cell_held() {
    let dir = tempfile::tempdir().unwrap();
    // 2,100 cells (more than the 2,000 the table lists), nothing run: the
    // sweep is cancelled so that its wall time is fixed.
    let (_coord, db, addr, sweep) = submitted(
        dir.path(),
        "[sweep]\nname = \"wide\"\n[train]\nmodel = \"mlp:64-8-10\"\ndataset = \"digits\"\nepochs = 1\n\
         [grid]\nlr = { log = [0.001, 0.5], num = 1050 }\nbatch_size = [32, 64]\n",
    );
    let o = cli(&["cancel", "--coordinator", &addr, &sweep]);
    assert!(o.status.success(), "{}", text(&o));
    let db = db.to_str().unwrap();
    let write = |name: &str, args: &[&str], from: &[&str]| -> std::path::PathBuf {
        let out = dir.path().join(name);
        let o = cli(&[args, &[sweep.as_str(), "--out", out.to_str().unwrap()], from].concat());
        assert!(o.status.success(), "{name}: {}", text(&o));
        out
    };
    // The page says when it was made: the one line allowed to differ.
    let page = |d: &Path| -> String {
        let t = std::fs::read_to_string(d.join("report.html")).unwrap();
        let at = t.find("data-key=\"made\">").expect("the page says when it was made");
        let end = at + t[at..].find("</dd>").unwrap();
        format!("{}{}", &t[..at], &t[end..])
    };
    let figures = |d: &Path| -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(d.join("figures"))
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap())
            })
            .collect();
        v.sort();
        v
    };
    for (args, name) in [(&["results"][..], "results"), (&["report", "--cells", "0,7,2099"][..], "report")] {
        let remote = write(&format!("{name}-remote"), args, &["--coordinator", &addr]);
        let local = write(&format!("{name}-db"), args, &["--db", db]);
        for f in ["results.csv", "results.json", "runs.csv", "epochs.csv"] {
            let (a, b) = (std::fs::read(remote.join(f)).unwrap(), std::fs::read(local.join(f)).unwrap());
            assert!(!a.is_empty() && a == b, "{name}: {f} differs");
        }
        let p = page(&remote);
        assert!(p.contains("<section id=\"cell-7\">") == (name == "report"), "{name}: the cells asked for are drawn");
        let q = page(&local);
        if let Some(at) = p.bytes().zip(q.bytes()).position(|(a, b)| a != b).or((p.len() != q.len()).then_some(0)) {
            let near =
                |t: &str| t.chars().skip(p[..at].chars().count().saturating_sub(80)).take(240).collect::<String>();
            panic!("{name}: report.html differs at byte {at}:\nstreamed: {}\ndatabase: {}", near(&p), near(&q));
        }
        assert_eq!(figures(&remote), figures(&local), "{name}: the figures differ");
    }
    // Printed as it streams, it is what the database prints.
    let o = cli(&[
        "results",
        &sweep,
        "--format",
        "csv",
        "--out",
        dir.path().join("printed").to_str().unwrap(),
        "--coordinator",
        &addr,
    ]);
    let local = cli(&["results", &sweep, "--format", "csv", "--db", db]);
    assert!(o.status.success() && local.status.success(), "{}\n{}", text(&o), text(&local));
    assert_eq!(String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&local.stdout));
    assert_eq!(std::fs::read(dir.path().join("printed/results.csv")).unwrap(), local.stdout);
}

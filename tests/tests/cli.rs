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
    for cmd in [&["analyze", "grads"][..], &["analyze", "trajectory"], &["models"], &["local"]] {
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

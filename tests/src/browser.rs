//! A real browser for tests of what a person sees: Debian's `chromium`,
//! headless. [`Browser::visit`] loads a page and hands back its DOM after
//! layout, what it printed to the console, and every network request it
//! made (from Chromium's own net log); [`Browser::screenshot`] renders it
//! to a PNG and [`Pixels`] says what is on it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A headless Chromium.
pub struct Browser {
    binary: PathBuf,
}

/// What loading a page gave.
#[derive(Debug)]
pub struct Visit {
    /// The DOM after the page loaded, serialized.
    pub dom: String,
    /// Console messages the page logged (one per line Chromium printed).
    pub console: Vec<String>,
    /// URLs the page requested (not the page itself, not the browser's own
    /// traffic).
    pub requests: Vec<String>,
}

/// Flags that keep Chromium from fetching anything of its own (updates,
/// safe browsing, sync), so every request in the net log is the page's.
const QUIET: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--hide-scrollbars",
    "--mute-audio",
];

impl Browser {
    /// The browser, if installed (`$GRADSWEEP_CHROMIUM`, else `chromium` on
    /// the PATH). When it is not and `GRADSWEEP_REQUIRE_BROWSER` is set (as
    /// in CI), panics: there the test may not skip.
    pub fn find() -> Option<Browser> {
        let binary = std::env::var_os("GRADSWEEP_CHROMIUM").map(PathBuf::from).unwrap_or_else(|| "chromium".into());
        let ok = Command::new(&binary)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            assert!(
                std::env::var_os("GRADSWEEP_REQUIRE_BROWSER").is_none(),
                "GRADSWEEP_REQUIRE_BROWSER is set, but {} does not run (apt-get install chromium)",
                binary.display()
            );
            eprintln!("skipped: no chromium (apt-get install chromium)");
            return None;
        }
        Some(Browser { binary })
    }

    fn command(&self, profile: &Path) -> Command {
        let mut c = Command::new(&self.binary);
        c.args(QUIET).arg(format!("--user-data-dir={}", profile.display())).stdin(Stdio::null());
        c
    }

    /// Loads `url` and returns its DOM, console messages and requests.
    pub fn visit(&self, url: &str) -> Visit {
        let tmp = tempfile::tempdir().unwrap();
        let netlog = tmp.path().join("net.json");
        let o = self
            .command(&tmp.path().join("profile"))
            .args(["--enable-logging=stderr", "--v=0", "--virtual-time-budget=3000"])
            .arg(format!("--log-net-log={}", netlog.display()))
            .arg("--dump-dom")
            .arg(url)
            .output()
            .expect("run chromium");
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "chromium failed on {url}: {stderr}");
        let console = stderr.lines().filter(|l| l.contains("CONSOLE")).map(str::to_string).collect();
        let log = std::fs::read_to_string(&netlog).unwrap_or_default();
        Visit { dom: String::from_utf8_lossy(&o.stdout).into_owned(), console, requests: urls_in_net_log(&log) }
    }

    /// Renders `url` at `size` (width, height) into `png`.
    pub fn screenshot(&self, url: &str, size: (u32, u32), png: &Path) {
        let tmp = tempfile::tempdir().unwrap();
        let o = self
            .command(&tmp.path().join("profile"))
            .arg(format!("--window-size={},{}", size.0, size.1))
            .arg(format!("--screenshot={}", png.display()))
            .arg(url)
            .output()
            .expect("run chromium");
        assert!(o.status.success() && png.exists(), "no screenshot of {url}: {}", String::from_utf8_lossy(&o.stderr));
    }
}

/// Every URL the page asked for, in order, each once: the net log's
/// `URL_REQUEST_START_JOB` events with an initiator (the browser's own
/// traffic — update checks, network time — has none, "not an origin"; so
/// has the navigation to the page itself).
pub fn urls_in_net_log(log: &str) -> Vec<String> {
    let mut out: Vec<String> = vec![];
    let doc: serde_json::Value = serde_json::from_str(log).unwrap_or_else(|_| {
        // A log cut short (the browser exited before closing it) still lists
        // its events one per line; close it.
        serde_json::from_str(&format!("{}]}}", log.trim_end().trim_end_matches(','))).unwrap_or_default()
    });
    let start = doc.pointer("/constants/logEventTypes/URL_REQUEST_START_JOB").and_then(|t| t.as_u64());
    let events = doc.get("events").and_then(|e| e.as_array()).cloned().unwrap_or_default();
    for e in events {
        if e.get("type").and_then(|t| t.as_u64()) != start {
            continue;
        }
        let initiator = e.pointer("/params/initiator").and_then(|u| u.as_str()).unwrap_or("not an origin");
        if let Some(u) = e.pointer("/params/url").and_then(|u| u.as_str())
            && initiator != "not an origin"
            && !out.iter().any(|x| x == u)
        {
            out.push(u.to_string());
        }
    }
    out
}

/// A decoded screenshot.
pub struct Pixels {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    rgb: Vec<[u8; 3]>,
}

impl Pixels {
    /// Decodes a PNG file (8-bit RGB or RGBA).
    pub fn read(path: &Path) -> Pixels {
        let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        let channels = info.color_type.samples();
        assert_eq!(info.bit_depth, png::BitDepth::Eight, "{}", path.display());
        let rgb = buf[..info.buffer_size()].chunks(channels).map(|p| [p[0], p[1], p[2]]).collect();
        Pixels { width: info.width as usize, height: info.height as usize, rgb }
    }

    /// In the rectangle from (x, y) of size (w, h): how many pixels are not
    /// white, and how many distinct colours there are.
    pub fn ink(&self, x: usize, y: usize, w: usize, h: usize) -> (usize, usize) {
        let mut colours = std::collections::BTreeSet::new();
        let mut n = 0;
        for row in y..(y + h).min(self.height) {
            for col in x..(x + w).min(self.width) {
                let p = self.rgb[row * self.width + col];
                if p != [255, 255, 255] {
                    n += 1;
                }
                colours.insert(p);
            }
        }
        (n, colours.len())
    }
}

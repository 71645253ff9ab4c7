//! One coordinator per database: [`DbLock`], an exclusive lock on the file
//! `<db>.lock` beside the database, held for the coordinator's lifetime.
//!
//! The lock is the operating system's (`flock` on Unix), so it goes away
//! with the process that holds it: a coordinator that was SIGKILLed, or
//! whose machine rebooted, leaves nothing that blocks its restart. The file
//! says who holds it (host, pid, since when), so a second coordinator's
//! refusal names the first. On network file systems such locks are only as
//! good as the server's lock support: keep the database on a local disk.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{CoordinatorError, Result};

/// The exclusive lock of one database, released when dropped.
#[derive(Debug)]
pub struct DbLock {
    _file: File,
    path: PathBuf,
}

/// `<db>.lock`.
pub fn lock_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

impl DbLock {
    /// Takes the lock of the database at `db`, or says who holds it.
    pub fn acquire(db: &Path) -> Result<Self> {
        let path = lock_path(db);
        let fail = |message: String| CoordinatorError::Database { path: db.display().to_string(), message };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| fail(format!("cannot open its lock file {}: {e}", path.display())))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let holder = if holder.is_empty() { "a coordinator starting up" } else { holder };
                return Err(fail(format!(
                    "in use by another coordinator ({holder}; lock file {}). Stop that one first, or give this one \
                     another database file. The lock goes away with its process, so a coordinator that was killed \
                     never blocks a restart",
                    path.display()
                )));
            }
            Err(TryLockError::Error(e)) => {
                return Err(fail(format!("cannot lock {}: {e} (is the database on a local disk?)", path.display())));
            }
        }
        let host = hostname::get().map(|h| h.to_string_lossy().into_owned()).unwrap_or_else(|_| "unknown host".into());
        let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let holder = format!(
            "host {host}, pid {}, since {}\n",
            std::process::id(),
            gradsweep_report::format::utc(since as i64 * 1000)
        );
        let written = file.set_len(0).and_then(|()| file.seek(SeekFrom::Start(0))).and_then(|_| {
            file.write_all(holder.as_bytes())?;
            file.flush()
        });
        if let Err(e) = written {
            tracing::warn!(lock = %path.display(), error = %e, "could not record this coordinator in its lock file");
        }
        Ok(DbLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A second lock on the same database is refused, naming the holder;
    /// once the first is dropped, the database can be locked again.
    #[test]
    fn one_holder_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.db");
        let first = DbLock::acquire(&db).unwrap();
        assert_eq!(first.path(), dir.path().join("state.db.lock"));
        let err = DbLock::acquire(&db).unwrap_err().to_string();
        assert!(err.contains(&format!("pid {}", std::process::id())), "{err}");
        assert!(err.contains("in use by another coordinator"), "{err}");
        drop(first);
        DbLock::acquire(&db).unwrap();
    }
}

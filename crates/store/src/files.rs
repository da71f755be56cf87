//! Private files: the SQLite database (with its WAL and shared-memory files),
//! backups and the directories holding them are readable by Fleetgate's user only.
//! Modes are set explicitly after creation rather than left to the process umask,
//! and files made by an earlier version (0644 in 0755 directories) are corrected
//! when Fleetgate starts.

use std::io;
use std::path::Path;

/// Mode of Fleetgate's private directories.
pub const DIR_MODE: u32 = 0o700;
/// Mode of Fleetgate's private files.
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` (and missing parents) and makes `dir` itself mode 0700.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    set_mode(dir, DIR_MODE)
}

/// Makes an existing file mode 0600; a missing file is not an error.
pub fn private_file_if_exists(path: &Path) -> io::Result<()> {
    match set_mode(path, FILE_MODE) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Creates an empty file with mode 0600; fails if it exists.
pub fn create_private_file(path: &Path) -> io::Result<std::fs::File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(FILE_MODE);
    }
    let f = opts.open(path)?;
    // The mode given to open(2) is reduced by the umask; set it outright.
    set_mode(path, FILE_MODE)?;
    Ok(f)
}

/// A SQLite database file and its companions (`-wal`, `-shm`, `-journal`) made
/// private; the database file is created (empty, 0600) when missing, so that
/// SQLite, which gives the companions the database file's mode, never makes a
/// world-readable one.
pub fn private_sqlite_files(db: &Path) -> io::Result<()> {
    if !db.exists() {
        match create_private_file(db) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
    }
    private_file_if_exists(db)?;
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        private_file_if_exists(Path::new(&name))?;
    }
    Ok(())
}

/// Every file directly in `dir` made 0600 and `dir` itself 0700 (existing backups).
pub fn private_tree(dir: &Path) -> io::Result<()> {
    if !dir.is_dir() {
        return Ok(());
    }
    set_mode(dir, DIR_MODE)?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            private_file_if_exists(&entry.path())?;
        }
    }
    Ok(())
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_: &Path, _: u32) -> io::Result<()> {
    Ok(())
}

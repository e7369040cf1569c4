//! Paths beneath a job's local folder, reached without following symbolic links.
//!
//! Other local users who can write into a job's folder are untrusted (DESIGN.md): a directory
//! replaced by a link, or a link planted at a temporary name, must not make a pull write,
//! truncate, rename or delete anything outside the folder, nor make a push read a file the
//! folder never held. So every path ferrysync creates, opens, renames or deletes under the
//! local root goes through here: the root is opened once (it comes from the trusted job file,
//! so a link there is the administrator's choice and is followed), then each component below
//! it with `openat(O_DIRECTORY | O_NOFOLLOW)` relative to the one before, and the last name is
//! used only relative to its parent's descriptor (`openat`, `renameat`, `unlinkat`,
//! `mkdirat`, `fstatat(AT_SYMLINK_NOFOLLOW)`). A link anywhere below the root fails with
//! ELOOP or ENOTDIR; this module turns those into errors that say so.
//!
//! Component by component rather than `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`: it is
//! equally strict for the paths a job has (relative, `/`-separated, never `.` or `..`, which
//! are refused here as well), works on every kernel, and so has a single code path to test.
//! Everything here blocks: call it on a blocking thread.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

/// A directory beneath a job's local root, open, with its path relative to the root for
/// errors.
pub(crate) struct Dir {
    fd: OwnedFd,
    rel: String,
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// The error for a symbolic link (or a non-directory) met at `rel`.
fn refused(e: Errno, rel: &str) -> io::Error {
    match e {
        Errno::LOOP | Errno::MLINK => io::Error::other(format!(
            "{rel} is a symbolic link: ferrysync does not follow links inside a job's folder"
        )),
        Errno::NOTDIR => io::Error::new(
            io::ErrorKind::NotADirectory,
            format!("{rel} is not a directory (or is a symbolic link to one)"),
        ),
        other => io::Error::from(other),
    }
}

/// Checks that `name` is one plain path component.
fn component(name: &str) -> io::Result<&str> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a plain file name"),
        ));
    }
    Ok(name)
}

impl Dir {
    /// Opens the job's root (following a link there: it is the job file's own path).
    pub(crate) fn root(root: &Path) -> io::Result<Dir> {
        let fd = rustix::fs::open(
            root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Dir {
            fd,
            rel: String::new(),
        })
    }

    /// Opens the directory `rel` (`""`: the root) beneath `root`, following no link.
    pub(crate) fn open(root: &Path, rel: &str) -> io::Result<Dir> {
        let mut dir = Dir::root(root)?;
        if !rel.is_empty() {
            for name in rel.split('/') {
                dir = dir.child(name)?;
            }
        }
        Ok(dir)
    }

    /// Opens the directory holding `rel` and returns it with the last name of `rel`.
    pub(crate) fn parent_of<'r>(root: &Path, rel: &'r str) -> io::Result<(Dir, &'r str)> {
        let (parent, name) = crate::model::paths::split_parent(rel);
        Ok((Dir::open(root, parent)?, component(name)?))
    }

    /// The path of `name` in this directory, relative to the job's root.
    pub(crate) fn rel(&self, name: &str) -> String {
        crate::model::paths::join(&self.rel, name)
    }

    /// Opens the subdirectory `name`; a link there is refused.
    pub(crate) fn child(&self, name: &str) -> io::Result<Dir> {
        let rel = self.rel(component(name)?);
        let fd = rustix::fs::openat(&self.fd, name, DIR_FLAGS, Mode::empty())
            .map_err(|e| refused(e, &rel))?;
        Ok(Dir { fd, rel })
    }

    /// Opens the subdirectory `name`, creating it (mode 0777 less the umask) if it does not
    /// exist; a link there is refused, not followed.
    pub(crate) fn make_child(&self, name: &str) -> io::Result<Dir> {
        match self.child(name) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                match rustix::fs::mkdirat(&self.fd, name, Mode::from_raw_mode(0o777)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(refused(e, &self.rel(name))),
                }
                self.child(name)
            }
            other => other,
        }
    }

    /// Opens (creating where missing) every directory of `rel` beneath `root`, as
    /// `create_dir_all` would, but through no link.
    pub(crate) fn make_all(root: &Path, rel: &str) -> io::Result<Dir> {
        let mut dir = Dir::root(root)?;
        if !rel.is_empty() {
            for name in rel.split('/') {
                dir = dir.make_child(name)?;
            }
        }
        Ok(dir)
    }

    /// Opens the existing file `name` for reading, refusing a link and anything but a regular
    /// file (O_NONBLOCK, so that a FIFO put in a file's place cannot block the open).
    pub(crate) fn open_file(&self, name: &str) -> io::Result<std::fs::File> {
        let rel = self.rel(component(name)?);
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK,
            Mode::empty(),
        )
        .map_err(|e| refused(e, &rel))?;
        let file = std::fs::File::from(fd);
        if !file.metadata()?.is_file() {
            return Err(io::Error::other(format!("{rel} is not a regular file")));
        }
        // Reads of a regular file never block; clear the flag all the same.
        rustix::fs::fcntl_setfl(&file, OFlags::empty())?;
        Ok(file)
    }

    /// Creates `name` as a new file for reading and writing (mode 0666 less the umask):
    /// whatever held the name before (a stale temporary file, a link someone planted) is
    /// removed first, itself and never what it points to, and the create is exclusive, so the
    /// file returned is one this call made.
    pub(crate) fn create_new(&self, name: &str) -> io::Result<std::fs::File> {
        let rel = self.rel(component(name)?);
        match rustix::fs::unlinkat(&self.fd, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(e) => return Err(refused(e, &rel)),
        }
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o666),
        )
        .map_err(|e| refused(e, &rel))?;
        Ok(std::fs::File::from(fd))
    }

    /// Opens the existing file `name` for reading and writing, if it is still a file this
    /// process could have written: a regular file (not a link: O_NOFOLLOW), with no other
    /// hard link to it, owned by the user ferrysync runs as. `None` when it is missing or is
    /// anything else (the caller starts over with [`Dir::create_new`]).
    pub(crate) fn reopen_own(&self, name: &str) -> io::Result<Option<std::fs::File>> {
        use std::os::unix::fs::MetadataExt;
        component(name)?;
        let fd = match rustix::fs::openat(
            &self.fd,
            name,
            OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            // Missing, a link, a directory, a FIFO without a reader, ...: not ours.
            Err(_) => return Ok(None),
        };
        let file = std::fs::File::from(fd);
        let meta = file.metadata()?;
        let us = rustix::process::geteuid().as_raw();
        if !meta.is_file() || meta.nlink() != 1 || meta.uid() != us {
            return Ok(None);
        }
        rustix::fs::fcntl_setfl(&file, OFlags::empty())?;
        Ok(Some(file))
    }

    /// The permission bits (0777) of the regular file `name`, if one is there (not through a
    /// link: a link, a directory or nothing gives `None`).
    pub(crate) fn file_mode(&self, name: &str) -> io::Result<Option<u32>> {
        match rustix::fs::statat(&self.fd, component(name)?, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => {
                let regular = FileType::from_raw_mode(st.st_mode) == FileType::RegularFile;
                Ok(regular.then_some(Mode::from_raw_mode(st.st_mode).bits() & 0o777))
            }
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(refused(e, &self.rel(name))),
        }
    }

    /// Renames `from` to `to`, both in this directory. A link at `to` is replaced itself, never
    /// its target (rename never follows the new name).
    pub(crate) fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        rustix::fs::renameat(&self.fd, component(from)?, &self.fd, component(to)?)
            .map_err(|e| refused(e, &self.rel(to)))
    }

    /// Moves `from` in this directory to `to` in `dest` (another directory beneath the root, or
    /// an archive folder), never replacing what is there: `Ok(false)` when `to` exists
    /// (RENAME_NOREPLACE), so that the caller picks another name.
    pub(crate) fn move_no_replace(&self, from: &str, dest: &Dir, to: &str) -> io::Result<bool> {
        match rustix::fs::renameat_with(
            &self.fd,
            component(from)?,
            &dest.fd,
            component(to)?,
            rustix::fs::RenameFlags::NOREPLACE,
        ) {
            Ok(()) => Ok(true),
            Err(Errno::EXIST) => Ok(false),
            Err(e) => Err(refused(e, &dest.rel(to))),
        }
    }

    /// The entries of this directory (not `.` and `..`), each with what `lstat` says of it
    /// (a link is reported as the link).
    pub(crate) fn entries(&self) -> io::Result<Vec<(String, rustix::fs::Stat)>> {
        let mut out = Vec::new();
        for entry in rustix::fs::Dir::read_from(&self.fd)? {
            let entry = entry?;
            let Ok(name) = entry.file_name().to_str() else {
                continue;
            };
            if name == "." || name == ".." {
                continue;
            }
            let st = rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| refused(e, &self.rel(name)))?;
            out.push((name.to_string(), st));
        }
        Ok(out)
    }

    /// Deletes the file (or link: the link itself) `name`.
    pub(crate) fn remove_file(&self, name: &str) -> io::Result<()> {
        rustix::fs::unlinkat(&self.fd, component(name)?, AtFlags::empty())
            .map_err(|e| refused(e, &self.rel(name)))
    }

    /// Removes the empty directory `name` (a link there is not a directory: ENOTDIR).
    pub(crate) fn remove_dir(&self, name: &str) -> io::Result<()> {
        rustix::fs::unlinkat(&self.fd, component(name)?, AtFlags::REMOVEDIR)
            .map_err(|e| refused(e, &self.rel(name)))
    }

    /// Makes the entries of this directory (a rename into it) durable.
    pub(crate) fn sync(&self) -> io::Result<()> {
        rustix::fs::fsync(self.fd.as_fd()).map_err(io::Error::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    #[test]
    fn no_link_below_the_root_is_followed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(root.join("real")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret"), b"secret").unwrap();
        symlink(&outside, root.join("d")).unwrap();
        symlink(outside.join("secret"), root.join("real/f")).unwrap();

        let e = Dir::open(&root, "d").err().unwrap();
        assert!(e.to_string().contains("d is "), "{e}");
        assert!(Dir::open(&root, "d/x").is_err());
        assert!(Dir::make_all(&root, "d/new").is_err());
        assert!(!outside.join("new").exists(), "mkdir went through the link");
        let real = Dir::open(&root, "real").unwrap();
        let e = real.open_file("f").unwrap_err();
        assert!(e.to_string().contains("real/f is a symbolic link"), "{e}");
        assert!(real.reopen_own("f").unwrap().is_none());
        assert_eq!(real.file_mode("f").unwrap(), None);
        // A planted link at a new file's name is replaced, its target left alone.
        real.create_new("f").unwrap();
        assert_eq!(std::fs::read(outside.join("secret")).unwrap(), b"secret");
        assert!(std::fs::symlink_metadata(root.join("real/f"))
            .unwrap()
            .is_file());
        for bad in ["..", ".", "", "a/b"] {
            assert!(real.create_new(bad).is_err(), "{bad:?}");
        }
        assert!(Dir::open(&root, "real/..").is_err());
        // A symlink at the final name is replaced by a rename, not written through.
        symlink(outside.join("secret"), root.join("real/g")).unwrap();
        real.rename("f", "g").unwrap();
        assert_eq!(std::fs::read(outside.join("secret")).unwrap(), b"secret");
        assert!(std::fs::symlink_metadata(root.join("real/g"))
            .unwrap()
            .is_file());
        // Deleting a link deletes the link.
        symlink(outside.join("secret"), root.join("real/h")).unwrap();
        real.remove_file("h").unwrap();
        assert!(outside.join("secret").exists());
        assert!(Dir::open(&root, "d").is_err());
        assert!(Dir::root(&root).unwrap().remove_dir("d").is_err());
        assert!(outside.exists());
    }

    #[test]
    fn a_file_is_reopened_only_if_it_is_a_lone_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("mine"), b"part").unwrap();
        std::fs::write(root.join("linked"), b"part").unwrap();
        std::fs::hard_link(root.join("linked"), root.join("other-name")).unwrap();
        std::fs::create_dir(root.join("dir")).unwrap();
        let d = Dir::root(root).unwrap();
        assert!(d.reopen_own("mine").unwrap().is_some());
        assert!(d.reopen_own("linked").unwrap().is_none(), "a hard link");
        assert!(d.reopen_own("dir").unwrap().is_none());
        assert!(d.reopen_own("missing").unwrap().is_none());
        std::fs::set_permissions(root.join("mine"), std::fs::Permissions::from_mode(0o640))
            .unwrap();
        assert_eq!(d.file_mode("mine").unwrap(), Some(0o640));
        assert_eq!(d.file_mode("dir").unwrap(), None);
        assert_eq!(d.file_mode("missing").unwrap(), None);
        // make_all creates what is missing and reuses what is there.
        Dir::make_all(root, "dir/a/b").unwrap();
        Dir::make_all(root, "dir/a/b").unwrap();
        assert!(root.join("dir/a/b").is_dir());
    }
}

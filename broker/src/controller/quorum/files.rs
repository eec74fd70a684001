//! The quorum's small files: the Raft hard state and the newest snapshot, each written whole
//! to a temporary file, fsynced, renamed over the old one and the directory fsynced, and read
//! back only if its checksum holds. Layout: magic (8 bytes), CRC-32C of the payload (4), payload
//! length (8), payload.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

const HEADER: usize = 20;

#[derive(Debug, thiserror::Error)]
pub(crate) enum FileError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is damaged: {reason}")]
    Damaged { path: PathBuf, reason: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FileError + '_ {
    move |source| FileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Replaces `path` with `payload`, durably.
pub(crate) fn write(path: &Path, magic: &[u8; 8], payload: &[u8]) -> Result<(), FileError> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp).map_err(io(&tmp))?;
        let mut head = Vec::with_capacity(HEADER);
        head.extend_from_slice(magic);
        head.extend_from_slice(&crc32c::crc32c(payload).to_be_bytes());
        head.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        f.write_all(&head).map_err(io(&tmp))?;
        f.write_all(payload).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    fs::rename(&tmp, path).map_err(io(path))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// The payload of `path`; `None` if there is no such file.
pub(crate) fn read(path: &Path, magic: &[u8; 8]) -> Result<Option<Vec<u8>>, FileError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(path)(e)),
    };
    let damaged = |reason: &str| FileError::Damaged {
        path: path.to_path_buf(),
        reason: reason.into(),
    };
    if bytes.len() < HEADER || &bytes[..8] != magic {
        return Err(damaged("bad header"));
    }
    let crc = u32::from_be_bytes(bytes[8..12].try_into().expect("4 bytes"));
    let len = u64::from_be_bytes(bytes[12..20].try_into().expect("8 bytes"));
    let payload = &bytes[HEADER..];
    if payload.len() as u64 != len {
        return Err(damaged("length does not match"));
    }
    if crc32c::crc32c(payload) != crc {
        return Err(damaged("checksum does not match"));
    }
    Ok(Some(payload.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_reads_back_and_damage_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let magic = b"KEELTEST";
        assert_eq!(read(&path, magic).unwrap(), None);
        write(&path, magic, b"first").unwrap();
        write(&path, magic, b"second").unwrap();
        assert_eq!(read(&path, magic).unwrap().as_deref(), Some(&b"second"[..]));
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(read(&path, magic), Err(FileError::Damaged { .. })));
        fs::write(&path, &bytes[..10]).unwrap();
        assert!(matches!(read(&path, magic), Err(FileError::Damaged { .. })));
        assert!(matches!(
            read(&path, b"KEELELSE"),
            Err(FileError::Damaged { .. })
        ));
    }
}

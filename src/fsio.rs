//! Writing files so that a killed process never leaves a half-written one under the real name:
//! checkpoints, weights, `.npy` outputs, PNG sheets. It depends on nothing but the error type,
//! so every layer that saves something (nn, data, eval, train) may use it.

use std::path::Path;

use crate::error::{Error, Result};

/// Writes `data` to `path` through `path.tmp` + fsync + rename.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::file(dir, format!("creating directory: {e}")))?;
    }
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    let mut f =
        std::fs::File::create(&tmp).map_err(|e| Error::file(&tmp, format!("creating: {e}")))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::file(&tmp, format!("writing: {e}")))?;
    std::fs::rename(&tmp, path)
        .map_err(|e| Error::file(path, format!("renaming {} into place: {e}", tmp.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_creates_the_directory_replaces_the_file_and_leaves_no_temp() {
        let dir = std::env::temp_dir().join(format!("mindreader-fsio-{}", std::process::id()));
        let path = dir.join("sub").join("out.npy");
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        assert!(!path.with_extension("npy.tmp").exists());
        std::fs::remove_dir_all(dir).ok();
    }
}

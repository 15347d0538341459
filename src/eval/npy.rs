//! NumPy `.npy` files (version 1.0, little-endian f32, C order): what `predict` writes so Python
//! users can read embeddings with `np.load`, and what `eval-retrieval` reads back.

use std::path::Path;

use crate::error::{Error, Result};
use crate::fsio::write_atomic;

/// Writes `data` with `shape` as `<f4` C-order, atomically.
pub fn write_f32(path: &Path, data: &[f32], shape: &[usize]) -> Result<()> {
    let n: usize = shape.iter().product();
    if n != data.len() {
        return Err(Error::file(
            path,
            format!("{} values for shape {shape:?}", data.len()),
        ));
    }
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let tuple = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {tuple}, }}");
    // Magic (6) + version (2) + header length (2) + header + '\n' is padded to a multiple of 64.
    let pad = 64 - (10 + header.len() + 1) % 64;
    header.push_str(&" ".repeat(pad % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + 4 * n);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(bytemuck::cast_slice(data));
    write_atomic(path, &out)
}

/// Reads a `<f4` C-order array: (values, shape).
pub fn read_f32(path: &Path) -> Result<(Vec<f32>, Vec<usize>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::file(path, format!("reading: {e}")))?;
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(Error::file(path, "not a .npy file (bad magic)"));
    }
    let (hlen, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(Error::file(path, format!("unsupported .npy version {v}"))),
    };
    let header = bytes
        .get(start..start + hlen)
        .ok_or_else(|| Error::file(path, "truncated .npy header"))?;
    let header = std::str::from_utf8(header)
        .map_err(|_| Error::file(path, "the .npy header is not text"))?;
    if !header.contains("'descr': '<f4'") {
        return Err(Error::file(
            path,
            format!(
                "expected little-endian float32 ('<f4'), header is {}",
                header.trim()
            ),
        ));
    }
    if header.contains("'fortran_order': True") {
        return Err(Error::file(
            path,
            "Fortran-order arrays are not supported; save with np.ascontiguousarray",
        ));
    }
    let shape_txt = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| Error::file(path, "no shape in the .npy header"))?;
    let shape: Vec<usize> = shape_txt
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .map_err(|_| Error::file(path, format!("bad shape entry `{s}` in the .npy header")))
        })
        .collect::<Result<_>>()?;
    let n: usize = shape.iter().product();
    let body = &bytes[start + hlen..];
    if body.len() != 4 * n {
        return Err(Error::file(
            path,
            format!(
                "shape {shape:?} needs {} bytes of data, found {}",
                4 * n,
                body.len()
            ),
        ));
    }
    Ok((
        body.chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        shape,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_header_alignment() {
        let path = std::env::temp_dir().join(format!("mindreader-npy-{}.npy", std::process::id()));
        let data: Vec<f32> = (0..12).map(|v| v as f32 * 0.5).collect();
        write_f32(&path, &data, &[3, 4]).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + hlen) % 64, 0);
        assert_eq!(read_f32(&path).unwrap(), (data, vec![3, 4]));
        std::fs::write(&path, b"garbage").unwrap();
        assert!(read_f32(&path)
            .unwrap_err()
            .to_string()
            .contains("bad magic"));
        std::fs::remove_file(path).ok();
    }
}

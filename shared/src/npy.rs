//! Reading (and, for tests and tools, writing) 2-d NumPy `.npy` arrays of
//! f32 or f64, as written by `numpy.save`.
//!
//! Format: the magic `\x93NUMPY`, a version (1.0: u16 header length;
//! 2.0/3.0: u32), then a Python-literal header
//! `{'descr': '<f8', 'fortran_order': False, 'shape': (n, d), }` padded to a
//! multiple of 64 bytes, then the data. Every malformed file is an
//! [`NpyError`] that says what is wrong.

use std::path::Path;

/// Why an NPY file cannot be used.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum NpyError {
    /// The file could not be read.
    #[error("{path}: cannot read: {message}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        message: String,
    },
    /// The file is not a valid NPY array gradsweep can use.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// A 2-d array in row-major order, as f64.
#[derive(Debug, Clone, PartialEq)]
pub struct Array2 {
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// `rows × cols` values, row-major.
    pub data: Vec<f64>,
    /// Whether the file stored f32 (`<f4`) rather than f64.
    pub was_f32: bool,
}

/// Reads a 2-d f32/f64 array; rejects other dtypes, ranks, truncation and
/// non-finite values.
pub fn read(path: &Path) -> Result<Array2, NpyError> {
    let bytes =
        std::fs::read(path).map_err(|e| NpyError::Io { path: path.display().to_string(), message: e.to_string() })?;
    parse(&bytes, &path.display().to_string())
}

/// Parses NPY bytes; `name` labels errors.
pub fn parse(b: &[u8], name: &str) -> Result<Array2, NpyError> {
    let bad = |m: String| NpyError::Invalid { path: name.to_string(), message: m };
    if b.len() < 10 || &b[..6] != b"\x93NUMPY" {
        return Err(bad("not an NPY file (bad magic bytes)".into()));
    }
    let (major, minor) = (b[6], b[7]);
    let (hlen, start) = match major {
        1 => (u16::from_le_bytes([b[8], b[9]]) as usize, 10),
        2 | 3 => {
            if b.len() < 12 {
                return Err(bad("truncated header".into()));
            }
            (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12)
        }
        _ => return Err(bad(format!("unsupported NPY version {major}.{minor}"))),
    };
    let header = b.get(start..start + hlen).ok_or_else(|| bad(format!("truncated header (needs {hlen} bytes)")))?;
    let header = std::str::from_utf8(header).map_err(|_| bad("header is not text".into()))?;
    let descr = dict_value(header, "descr").ok_or_else(|| bad(format!("header has no 'descr': {}", header.trim())))?;
    let fortran = dict_value(header, "fortran_order").ok_or_else(|| bad("header has no 'fortran_order'".into()))?;
    let shape = dict_value(header, "shape").ok_or_else(|| bad("header has no 'shape'".into()))?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    let (size, big, is_f32) = match descr {
        "<f4" | "|f4" | "=f4" => (4, false, true),
        ">f4" => (4, true, true),
        "<f8" | "|f8" | "=f8" => (8, false, false),
        ">f8" => (8, true, false),
        other => return Err(bad(format!("dtype {other} is not supported (need float32 or float64)"))),
    };
    let fortran = match fortran.trim() {
        "False" => false,
        "True" => true,
        other => return Err(bad(format!("fortran_order is `{other}`"))),
    };
    let dims: Vec<usize> = shape
        .trim()
        .trim_start_matches('(')
        .trim_end_matches(')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| bad(format!("shape entry `{s}` is not a size"))))
        .collect::<Result<_, _>>()?;
    let [rows, cols] = dims[..] else {
        return Err(bad(format!("array has {} dimension(s) {dims:?}; need a 2-d array (rows × columns)", dims.len())));
    };
    let data = &b[start + hlen..];
    let need = rows.checked_mul(cols).and_then(|n| n.checked_mul(size)).ok_or_else(|| bad("shape too large".into()))?;
    if data.len() < need {
        return Err(bad(format!("truncated data: {} bytes, shape ({rows}, {cols}) needs {need}", data.len())));
    }
    if data.len() > need {
        return Err(bad(format!("{} bytes of data, shape ({rows}, {cols}) needs {need}", data.len())));
    }
    let mut vals: Vec<f64> = data
        .chunks_exact(size)
        .map(|c| match (size, big) {
            (4, false) => f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64,
            (4, true) => f32::from_be_bytes([c[0], c[1], c[2], c[3]]) as f64,
            (_, false) => f64::from_le_bytes(c.try_into().unwrap_or([0; 8])),
            (_, true) => f64::from_be_bytes(c.try_into().unwrap_or([0; 8])),
        })
        .collect();
    if let Some(i) = vals.iter().position(|v| !v.is_finite()) {
        return Err(bad(format!(
            "non-finite value (NaN or Inf) at row {}, column {}",
            if fortran { i % rows } else { i / cols },
            if fortran { i / rows } else { i % cols }
        )));
    }
    if fortran {
        let mut t = vec![0.0; vals.len()];
        for r in 0..rows {
            for c in 0..cols {
                t[r * cols + c] = vals[c * rows + r];
            }
        }
        vals = t;
    }
    Ok(Array2 { rows, cols, data: vals, was_f32: is_f32 })
}

/// The text after `'key':` up to the next top-level comma.
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let at = header.find(&format!("'{key}'")).or_else(|| header.find(&format!("\"{key}\"")))?;
    let rest = &header[at + key.len() + 2..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let mut depth = 0;
    for (i, ch) in rest.char_indices() {
        match ch {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' | '}' if depth == 0 => return Some(&rest[..i]),
            _ => {}
        }
    }
    None
}

/// Serialises a 2-d f32 array (row-major `rows × cols`) as NPY version 1.0,
/// bit for bit (no widening).
pub fn write_f32(rows: usize, cols: usize, data: &[f32]) -> Vec<u8> {
    let mut out = npy_header(&format!("({rows}, {cols})"), "<f4", data.len() * 4);
    data.iter().for_each(|v| out.extend(v.to_le_bytes()));
    out
}

/// Serialises a 1-d f32 array as NPY version 1.0, bit for bit.
pub fn write_f32_vector(data: &[f32]) -> Vec<u8> {
    let mut out = npy_header(&format!("({},)", data.len()), "<f4", data.len() * 4);
    data.iter().for_each(|v| out.extend(v.to_le_bytes()));
    out
}

/// The magic, version and header of an NPY 1.0 file (padded to 64 bytes),
/// with room reserved for `payload` more bytes.
fn npy_header(shape: &str, descr: &str, payload: usize) -> Vec<u8> {
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + payload);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    out
}

/// Serialises a 2-d array as NPY version 1.0 (f32 when `as_f32`), exactly as
/// `numpy.save` lays it out.
pub fn write(rows: usize, cols: usize, data: &[f64], as_f32: bool) -> Vec<u8> {
    let (descr, width) = if as_f32 { ("<f4", 4) } else { ("<f8", 8) };
    let mut out = npy_header(&format!("({rows}, {cols})"), descr, data.len() * width);
    for v in data {
        if as_f32 {
            out.extend((*v as f32).to_le_bytes());
        } else {
            out.extend(v.to_le_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_f32_and_f64() {
        let data: Vec<f64> = (0..6).map(|i| i as f64 * 0.5).collect();
        for f32s in [true, false] {
            let bytes = write(2, 3, &data, f32s);
            assert_eq!((10 + u16::from_le_bytes([bytes[8], bytes[9]]) as usize) % 64, 0, "header aligned to 64");
            let a = parse(&bytes, "x.npy").unwrap();
            assert_eq!((a.rows, a.cols, a.was_f32), (2, 3, f32s));
            assert_eq!(a.data, data);
        }
    }

    /// Replaces text in the header only (same length keeps the alignment).
    fn with_header(b: &[u8], from: &str, to: &str) -> Vec<u8> {
        let hl = u16::from_le_bytes([b[8], b[9]]) as usize;
        let h = std::str::from_utf8(&b[10..10 + hl]).unwrap().replace(from, to);
        assert_eq!(h.len(), hl, "keep the header length");
        let mut out = b[..10].to_vec();
        out.extend(h.bytes());
        out.extend(&b[10 + hl..]);
        out
    }

    #[test]
    fn fortran_order_and_big_endian() {
        let b =
            with_header(&write(2, 2, &[1.0, 3.0, 2.0, 4.0], false), "'fortran_order': False", "'fortran_order': True ");
        assert_eq!(parse(&b, "f.npy").unwrap().data, vec![1.0, 2.0, 3.0, 4.0]);
        let le = write(1, 2, &[1.5, -2.0], false);
        let mut be = with_header(&le, "<f8", ">f8");
        let start = be.len() - 16;
        for chunk in be[start..].chunks_exact_mut(8) {
            chunk.reverse();
        }
        assert_eq!(parse(&be, "b.npy").unwrap().data, vec![1.5, -2.0]);
    }

    #[test]
    fn malformed_files_are_rejected_clearly() {
        let good = write(2, 2, &[1.0, 2.0, 3.0, 4.0], true);
        let err = |b: &[u8]| parse(b, "g.npy").unwrap_err().to_string();
        assert!(err(b"PK\x03\x04 zip file").contains("bad magic"));
        let mut short = good.clone();
        short.truncate(good.len() - 3);
        assert!(err(&short).contains("truncated data"));
        let swap = |from: &str, to: &str| with_header(&good, from, to);
        assert!(err(&swap("<f4", "<i4")).contains("dtype <i4 is not supported"));
        assert!(err(&swap("(2, 2)", "(4,)  ")).contains("1 dimension"));
        assert!(err(&swap("(2, 2), }", "(1,2,2),}")).contains("3 dimension"));
        let nan = write(2, 2, &[1.0, f64::NAN, 3.0, 4.0], false);
        assert!(err(&nan).contains("row 0, column 1"));
        let mut v9 = good.clone();
        v9[6] = 9;
        assert!(err(&v9).contains("version 9"));
    }
}

//! A bounds-checked GGUF reader (format v2/v3) and the dequantizers this project needs.
//!
//! Layout: magic `GGUF`, version, tensor count, metadata count, the metadata key/values,
//! the tensor infos, padding to `general.alignment`, then the tensor data. Every length and
//! offset read from the file is checked against the buffer, so a truncated or corrupt file
//! gives a [`GgufError`] and never a panic.

use std::collections::BTreeMap;

use half::{bf16, f16};

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("not a GGUF file (magic bytes are {0:02x?}, expected \"GGUF\")")]
    BadMagic([u8; 4]),
    #[error("unsupported GGUF version {0} (this reader knows 2 and 3)")]
    BadVersion(u32),
    #[error("file is truncated: needed {needed} bytes at offset {offset}, file has {len}")]
    Truncated { offset: usize, needed: usize, len: usize },
    #[error("corrupt GGUF: {0}")]
    Corrupt(String),
    #[error(
        "tensor '{name}' has type {ty}, which this reader cannot dequantize (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1)"
    )]
    UnsupportedType { name: String, ty: String },
    #[error("tensor '{0}' is not in the file")]
    MissingTensor(String),
    #[error("metadata key '{0}' is missing or has the wrong type")]
    MissingKey(String),
}

/// A metadata value. Arrays keep their element values.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }
}

/// The element types of GGUF tensors (ggml's `ggml_type`), those we name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q8_0,
    BF16,
    Other(u32),
}

impl TensorType {
    fn from_u32(v: u32) -> Self {
        match v {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            8 => Self::Q8_0,
            30 => Self::BF16,
            other => Self::Other(other),
        }
    }

    /// (elements per block, bytes per block), or None for types we cannot size.
    fn block(self) -> Option<(usize, usize)> {
        match self {
            Self::F32 => Some((1, 4)),
            Self::F16 | Self::BF16 => Some((1, 2)),
            Self::Q4_0 => Some((32, 18)),
            Self::Q4_1 => Some((32, 20)),
            Self::Q8_0 => Some((32, 34)),
            Self::Other(_) => None,
        }
    }

    pub fn name(self) -> String {
        match self {
            Self::Other(v) => format!("ggml type {v}"),
            t => format!("{t:?}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` varies fastest. A PyTorch `[rows, cols]` matrix is `[cols, rows]` here.
    pub dims: Vec<usize>,
    pub ty: TensorType,
    /// Offset from the start of the data section.
    pub offset: usize,
}

impl TensorInfo {
    pub fn numel(&self) -> usize {
        self.dims.iter().product()
    }
    /// The row-major (PyTorch) shape: ggml's dims reversed.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().copied().collect()
    }
}

/// A parsed GGUF file that borrows its bytes.
pub struct Gguf<'a> {
    bytes: &'a [u8],
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    data_start: usize,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], GgufError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end =
            end.ok_or(GgufError::Truncated { offset: self.pos, needed: n, len: self.bytes.len() })?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], GgufError> {
        Ok(self.take(N)?.try_into().expect("take returned N bytes"))
    }
    fn u32(&mut self) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    /// A u64 length, checked to fit in what remains of the file (each element ≥ `min_elem` bytes).
    fn len(&mut self, min_elem: usize) -> Result<usize, GgufError> {
        let n = self.u64()?;
        let remaining = (self.bytes.len() - self.pos) as u64;
        if n.saturating_mul(min_elem as u64) > remaining {
            // Either a corrupt length or a cut-off file: both mean the data is not all there.
            return Err(GgufError::Truncated {
                offset: self.pos,
                needed: n.saturating_mul(min_elem as u64).min(usize::MAX as u64) as usize,
                len: self.bytes.len(),
            });
        }
        Ok(n as usize)
    }
    fn string(&mut self) -> Result<String, GgufError> {
        let n = self.len(1)?;
        let at = self.pos;
        let s = self.take(n)?;
        String::from_utf8(s.to_vec())
            .map_err(|_| GgufError::Corrupt(format!("string at offset {at} is not UTF-8")))
    }
    fn value(&mut self, ty: u32, depth: usize) -> Result<Value, GgufError> {
        Ok(match ty {
            0 => Value::U8(self.array::<1>()?[0]),
            1 => Value::I8(self.array::<1>()?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array()?)),
            3 => Value::I16(i16::from_le_bytes(self.array()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.array()?)),
            6 => Value::F32(f32::from_le_bytes(self.array()?)),
            7 => Value::Bool(self.array::<1>()?[0] != 0),
            8 => Value::String(self.string()?),
            9 => {
                if depth > 2 {
                    return Err(GgufError::Corrupt("metadata arrays nested too deeply".into()));
                }
                let elem_ty = self.u32()?;
                let n = self.len(1)?;
                let mut items = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    items.push(self.value(elem_ty, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.array()?)),
            12 => Value::F64(f64::from_le_bytes(self.array()?)),
            other => {
                return Err(GgufError::Corrupt(format!("unknown metadata value type {other}")));
            }
        })
    }
}

impl<'a> Gguf<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Self, GgufError> {
        let mut c = Cursor { bytes, pos: 0 };
        let magic: [u8; 4] = c.array()?;
        if &magic != b"GGUF" {
            return Err(GgufError::BadMagic(magic));
        }
        let version = c.u32()?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::BadVersion(version));
        }
        // A tensor info is at least 24 bytes and a key/value at least 12: bounds the counts.
        let n_tensors = c.len(24)?;
        let n_kv = c.len(12)?;

        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = c.string()?;
            let ty = c.u32()?;
            let value = c.value(ty, 0)?;
            metadata.insert(key, value);
        }

        let mut tensors = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let name = c.string()?;
            let n_dims = c.u32()? as usize;
            if n_dims == 0 || n_dims > 4 {
                return Err(GgufError::Corrupt(format!("tensor '{name}' has {n_dims} dimensions")));
            }
            let dims =
                (0..n_dims).map(|_| c.u64().map(|d| d as usize)).collect::<Result<Vec<_>, _>>()?;
            let ty = TensorType::from_u32(c.u32()?);
            let offset = c.u64()? as usize;
            tensors.push(TensorInfo { name, dims, ty, offset });
        }

        let alignment = match metadata.get("general.alignment") {
            Some(v) => v.as_u64().filter(|a| a.is_power_of_two()).ok_or_else(|| {
                GgufError::Corrupt("general.alignment is not a power of two".into())
            })? as usize,
            None => 32,
        };
        let data_start = c.pos.div_ceil(alignment) * alignment;

        let gguf = Gguf { bytes, version, metadata, tensors, data_start };
        // Validate every tensor's extent up front; types we cannot size fail when read.
        for t in gguf.tensors.iter().filter(|t| t.ty.block().is_some()) {
            gguf.tensor_bytes(t)?;
        }
        Ok(gguf)
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        self.get(key).and_then(Value::as_u64).ok_or_else(|| GgufError::MissingKey(key.into()))
    }

    pub fn get_f64(&self, key: &str) -> Result<f64, GgufError> {
        self.get(key).and_then(Value::as_f64).ok_or_else(|| GgufError::MissingKey(key.into()))
    }

    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        self.get(key).and_then(Value::as_str).ok_or_else(|| GgufError::MissingKey(key.into()))
    }

    pub fn get_array(&self, key: &str) -> Result<&[Value], GgufError> {
        self.get(key).and_then(Value::as_array).ok_or_else(|| GgufError::MissingKey(key.into()))
    }

    pub fn tensor_info(&self, name: &str) -> Result<&TensorInfo, GgufError> {
        self.tensors
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| GgufError::MissingTensor(name.into()))
    }

    fn tensor_bytes(&self, t: &TensorInfo) -> Result<&'a [u8], GgufError> {
        let unsupported = || GgufError::UnsupportedType { name: t.name.clone(), ty: t.ty.name() };
        let (block, block_bytes) = t.ty.block().ok_or_else(unsupported)?;
        let numel = t.dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
        let numel = numel.ok_or_else(|| {
            GgufError::Corrupt(format!("tensor '{}' is impossibly large", t.name))
        })?;
        if numel % block != 0 {
            return Err(GgufError::Corrupt(format!(
                "tensor '{}' has {numel} elements, not a multiple of its block size {block}",
                t.name
            )));
        }
        let len = (numel / block).checked_mul(block_bytes);
        let start = self.data_start.checked_add(t.offset);
        let end = start.zip(len).and_then(|(s, len)| s.checked_add(len));
        match (start, end) {
            (Some(s), Some(e)) if e <= self.bytes.len() => Ok(&self.bytes[s..e]),
            _ => Err(GgufError::Truncated {
                offset: start.unwrap_or(usize::MAX),
                needed: len.unwrap_or(usize::MAX),
                len: self.bytes.len(),
            }),
        }
    }

    /// A tensor's bytes as stored (whole blocks of its type).
    pub fn tensor_raw(&self, name: &str) -> Result<&'a [u8], GgufError> {
        self.tensor_bytes(self.tensor_info(name)?)
    }

    /// Dequantizes a tensor to f32, returning its row-major shape and values.
    pub fn tensor_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>), GgufError> {
        let t = self.tensor_info(name)?;
        let raw = self.tensor_bytes(t)?;
        let values = dequantize(t.ty, raw)
            .ok_or_else(|| GgufError::UnsupportedType { name: t.name.clone(), ty: t.ty.name() })?;
        Ok((t.shape(), values))
    }
}

/// Dequantizes raw ggml blocks to f32. `raw` must hold whole blocks (the reader guarantees it).
pub fn dequantize(ty: TensorType, raw: &[u8]) -> Option<Vec<f32>> {
    let f16_at = |b: &[u8], i: usize| f16::from_le_bytes([b[i], b[i + 1]]).to_f32();
    Some(match ty {
        TensorType::F32 => {
            raw.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
        }
        TensorType::F16 => raw.chunks_exact(2).map(|b| f16_at(b, 0)).collect(),
        TensorType::BF16 => {
            raw.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
        }
        // {f16 d, i8 qs[32]}: w = d * q
        TensorType::Q8_0 => {
            let mut out = Vec::with_capacity(raw.len() / 34 * 32);
            for b in raw.chunks_exact(34) {
                let d = f16_at(b, 0);
                out.extend(b[2..].iter().map(|&q| d * (q as i8) as f32));
            }
            out
        }
        // {f16 d, u8 qs[16]}: low nibbles are weights 0..16, high nibbles 16..32; w = d * (q - 8)
        TensorType::Q4_0 => {
            let mut out = Vec::with_capacity(raw.len() / 18 * 32);
            for b in raw.chunks_exact(18) {
                let d = f16_at(b, 0);
                let qs = &b[2..];
                out.extend(qs.iter().map(|&q| d * ((q & 0x0f) as i32 - 8) as f32));
                out.extend(qs.iter().map(|&q| d * ((q >> 4) as i32 - 8) as f32));
            }
            out
        }
        // {f16 d, f16 m, u8 qs[16]}: w = d * q + m, nibbles as in Q4_0
        TensorType::Q4_1 => {
            let mut out = Vec::with_capacity(raw.len() / 20 * 32);
            for b in raw.chunks_exact(20) {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                let qs = &b[4..];
                out.extend(qs.iter().map(|&q| d * (q & 0x0f) as f32 + m));
                out.extend(qs.iter().map(|&q| d * (q >> 4) as f32 + m));
            }
            out
        }
        TensorType::Other(_) => return None,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a GGUF v3 file with one metadata string and the given tensors.
    pub(crate) fn tiny_gguf(tensors: &[(&str, &[u64], u32, Vec<u8>)]) -> Vec<u8> {
        let mut b = Vec::new();
        let s = |b: &mut Vec<u8>, s: &str| {
            b.extend((s.len() as u64).to_le_bytes());
            b.extend(s.as_bytes());
        };
        b.extend(b"GGUF");
        b.extend(3u32.to_le_bytes());
        b.extend((tensors.len() as u64).to_le_bytes());
        b.extend(1u64.to_le_bytes());
        s(&mut b, "general.architecture");
        b.extend(8u32.to_le_bytes());
        s(&mut b, "llama");
        let mut offset = 0u64;
        for (name, dims, ty, data) in tensors {
            s(&mut b, name);
            b.extend((dims.len() as u32).to_le_bytes());
            for d in *dims {
                b.extend(d.to_le_bytes());
            }
            b.extend(ty.to_le_bytes());
            b.extend(offset.to_le_bytes());
            offset += (data.len() as u64).div_ceil(32) * 32;
        }
        while b.len() % 32 != 0 {
            b.push(0);
        }
        for (_, _, _, data) in tensors {
            b.extend(data);
            while b.len() % 32 != 0 {
                b.push(0);
            }
        }
        b
    }

    #[test]
    fn dequantizes_each_block_format() {
        // Q8_0: d = 0.5, q = -16..16
        let mut q8 = f16::from_f32(0.5).to_le_bytes().to_vec();
        q8.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let want: Vec<f32> = (0..32).map(|i| 0.5 * (i as f32 - 16.0)).collect();
        assert_eq!(dequantize(TensorType::Q8_0, &q8).unwrap(), want);

        // Q4_1: d = 2, m = -1, byte j holds weight j (low nibble) and weight j+16 (high nibble)
        let mut q41 = f16::from_f32(2.0).to_le_bytes().to_vec();
        q41.extend(f16::from_f32(-1.0).to_le_bytes());
        q41.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let got = dequantize(TensorType::Q4_1, &q41).unwrap();
        assert_eq!(got[3], 2.0 * 3.0 - 1.0);
        assert_eq!(got[16 + 3], 2.0 * 12.0 - 1.0);

        // Q4_0: w = d * (q - 8)
        let mut q40 = f16::from_f32(0.25).to_le_bytes().to_vec();
        q40.extend((0..16u8).map(|j| j | (j << 4)));
        let got = dequantize(TensorType::Q4_0, &q40).unwrap();
        assert_eq!(got[0], -2.0);
        assert_eq!(got[31], 0.25 * 7.0);

        let bf: Vec<u8> = bf16::from_f32(1.5).to_le_bytes().to_vec();
        assert_eq!(dequantize(TensorType::BF16, &bf).unwrap(), vec![1.5]);
    }

    #[test]
    fn parses_and_reads_a_tensor() {
        let data: Vec<u8> =
            [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let file = tiny_gguf(&[("w", &[3, 2], 0, data)]);
        let g = Gguf::parse(&file).unwrap();
        assert_eq!(g.get_str("general.architecture").unwrap(), "llama");
        let (shape, v) = g.tensor_f32("w").unwrap();
        assert_eq!(shape, vec![2, 3]);
        assert_eq!(v, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    }

    #[test]
    fn rejects_bad_magic_truncation_and_unknown_types() {
        let data: Vec<u8> = [1.0f32; 8].iter().flat_map(|v| v.to_le_bytes()).collect();
        let file = tiny_gguf(&[("w", &[8], 0, data)]);
        assert!(matches!(Gguf::parse(b"GGML\x03\0\0\0"), Err(GgufError::BadMagic(_))));
        for cut in [3, 10, 30, 60, file.len() - 4] {
            let err = Gguf::parse(&file[..cut]).err().expect("truncated file must fail");
            assert!(
                matches!(err, GgufError::Truncated { .. } | GgufError::Corrupt(_)),
                "{cut}: {err}"
            );
        }
        let odd = tiny_gguf(&[("w", &[256], 12, vec![0; 144])]); // Q4_K
        let g = Gguf::parse(&odd).unwrap();
        assert!(matches!(g.tensor_f32("w"), Err(GgufError::UnsupportedType { .. })));
    }
}

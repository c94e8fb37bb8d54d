//! Sampling text from a checkpoint with the model's KV cache.
//!
//! The prompt is encoded after an end-of-text token (every training document starts with
//! one), then tokens are drawn one at a time until `max_tokens` or, unless told otherwise,
//! until the model ends the document.
//!
//! * **Past `max_seq_len`** the context slides ([`simplex_model::Decoder`]): when the model's
//!   window of `max_seq_len` tokens is full, its oldest `shift` tokens are dropped (default
//!   `max_seq_len / 4`) and the rest is fed again from position 0, so every token is what the
//!   full forward of the window it was drawn from predicts. A prompt longer than
//!   `max_seq_len` (leading end-of-text included) is cropped to its last `max_seq_len` tokens,
//!   with a warning in the log.
//! * **Several samples** of one prompt are decoded as one batch; sample `i` draws with seed
//!   `seed + i` (wrapping), so it is the text that `seed + i` gives alone, and the whole set
//!   is fixed by `seed`. A sample that ends at end-of-text stops there while the others go on.

use std::path::Path;

use candle_core::Device;
use simplex_model::{Config, Decoder, Model, Sampler, SamplingConfig};

use crate::checkpoint::{self, Checkpoint};
use crate::data::Tokenizer;
use crate::error::{Result, TrainError};
use crate::init::{named_vars, SeededInit};

#[cfg(test)]
mod tests;

/// A trained model with its tokenizer, ready to sample.
pub struct Generator {
    /// The model (f32).
    pub model: Model,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    /// The checkpoint step it was loaded from.
    pub step: u64,
    /// Where the weights live.
    pub device: Device,
}

/// How to sample ([`Generator::generate_samples`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GenerateOptions {
    /// New tokens at most per sample.
    pub max_tokens: usize,
    /// Temperature, top-k, top-p and the seed of sample 0 (sample `i` uses `seed + i`).
    pub sampling: SamplingConfig,
    /// Stop a sample at the end-of-text token.
    pub stop_at_eot: bool,
    /// Samples of the prompt (at least 1), decoded as one batch.
    pub num_samples: usize,
    /// How far the context slides past `max_seq_len` (`None`: `max_seq_len / 4`).
    pub shift: Option<usize>,
}

impl Default for GenerateOptions {
    /// 200 tokens, one sample, stopping at end-of-text, the default sampler and shift.
    fn default() -> Self {
        GenerateOptions {
            max_tokens: 200,
            sampling: SamplingConfig::default(),
            stop_at_eot: true,
            num_samples: 1,
            shift: None,
        }
    }
}

/// What one sample of [`Generator::generate_samples`] produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    /// Prompt tokens (the leading end-of-text token included), before any cropping.
    pub prompt_tokens: usize,
    /// Tokens cut from the front of the prompt because it was longer than `max_seq_len`.
    pub cropped: usize,
    /// The new token ids.
    pub tokens: Vec<u32>,
    /// Their text.
    pub text: String,
    /// Whether the model ended the document (end-of-text) before `max_tokens`.
    pub ended: bool,
    /// The seed this sample drew with.
    pub seed: u64,
    /// How many times the context slid while decoding (shared by the samples of a batch).
    pub slides: usize,
}

impl Generator {
    /// Loads the checkpoint of a run folder (or a checkpoint folder) onto `device`.
    pub fn load(path: &Path, device: &Device) -> Result<Generator> {
        let dir = checkpoint::locate(path).ok_or_else(|| {
            TrainError::checkpoint(path, "no checkpoint here (expected RUN_DIR/checkpoint/ or a folder with model.safetensors and state.json)")
        })?;
        let ck = Checkpoint::read(&dir, device)?;
        let cfg = Config::from_toml_str(&ck.config_toml)
            .map_err(|e| TrainError::checkpoint(dir.join("config.toml"), e.to_string()))?;
        let (vars, vb) = SeededInit::builder(0, device, &[]);
        let model = Model::new(&cfg, vb)?;
        let params =
            named_vars(&vars).ok_or_else(|| TrainError::checkpoint(&dir, "lock poisoned"))?;
        ck.load_weights(&params)?;
        let tokenizer = if ck.state.tokenizer == "bytes" {
            Tokenizer::Bytes
        } else {
            Tokenizer::from_file(&dir.join("tokenizer.json"))?
        };
        if tokenizer.vocab_size() > cfg.vocab_size {
            return Err(TrainError::checkpoint(
                dir.join("config.toml"),
                format!(
                    "vocab_size = {} is smaller than the tokenizer's {} ids",
                    cfg.vocab_size,
                    tokenizer.vocab_size()
                ),
            ));
        }
        Ok(Generator {
            model,
            tokenizer,
            step: ck.state.step,
            device: device.clone(),
        })
    }

    /// Continues `prompt` by at most `max_tokens` tokens; stops early at end-of-text when
    /// `stop_at_eot`. One sample with the default shift.
    pub fn generate(
        &self,
        prompt: &str,
        max_tokens: usize,
        sampling: SamplingConfig,
        stop_at_eot: bool,
    ) -> Result<Generated> {
        let opts = GenerateOptions {
            max_tokens,
            sampling,
            stop_at_eot,
            ..GenerateOptions::default()
        };
        let mut out = self.generate_samples(prompt, &opts)?;
        out.pop()
            .ok_or_else(|| TrainError::setting("num_samples", 1, "no sample came back"))
    }

    /// `opts.num_samples` continuations of `prompt`, decoded as one batch (see the module doc
    /// for the seeds and the sliding context).
    pub fn generate_samples(&self, prompt: &str, opts: &GenerateOptions) -> Result<Vec<Generated>> {
        let n = opts.num_samples;
        if n == 0 {
            return Err(TrainError::setting("num_samples", 0, "must be at least 1"));
        }
        let eot = self.tokenizer.eot();
        let mut ids = vec![eot];
        ids.extend(self.tokenizer.encode(prompt)?);
        let mut samplers = (0..n as u64)
            .map(|i| {
                Sampler::new(SamplingConfig {
                    seed: opts.sampling.seed.wrapping_add(i),
                    ..opts.sampling
                })
            })
            .collect::<simplex_model::Result<Vec<_>>>()?;
        let max_len = self.model.config().max_seq_len;
        if let Some(shift) = opts.shift.filter(|s| !(1..=max_len).contains(s)) {
            return Err(TrainError::setting(
                "shift",
                shift,
                format!("the context slides by 1 to max_seq_len = {max_len} tokens"),
            ));
        }
        let mut outs = vec![Vec::new(); n];
        let mut ended = vec![false; n];
        let (mut cropped, mut slides) = (ids.len().saturating_sub(max_len), 0);
        if opts.max_tokens > 0 {
            let rows = vec![ids.as_slice(); n];
            let (mut dec, mut logits) = Decoder::new(&self.model, &rows, opts.shift)?;
            cropped = dec.cropped();
            if cropped > 0 {
                tracing::warn!(
                    "the prompt is {} tokens (with the leading end-of-text), more than the model's max_seq_len = {max_len}: it sees only the last {max_len} (the first {cropped} are dropped)",
                    ids.len()
                );
            }
            for step in 0..opts.max_tokens {
                let mut next = vec![eot; n];
                for (r, sampler) in samplers.iter_mut().enumerate() {
                    if ended[r] {
                        continue;
                    }
                    let t = sampler.sample(&logits.get(r)?)?;
                    if opts.stop_at_eot && t == eot {
                        ended[r] = true;
                    } else {
                        outs[r].push(t);
                    }
                    next[r] = t;
                }
                if step + 1 == opts.max_tokens || ended.iter().all(|&e| e) {
                    break;
                }
                logits = dec.step(&next)?;
            }
            slides = dec.slides();
            if slides > 0 {
                tracing::info!(
                    "the context slid {slides} times by {} tokens (max_seq_len = {max_len})",
                    dec.shift()
                );
            }
        }
        outs.into_iter()
            .zip(ended)
            .enumerate()
            .map(|(i, (tokens, ended))| {
                Ok(Generated {
                    prompt_tokens: ids.len(),
                    cropped,
                    text: self.tokenizer.decode(&tokens)?,
                    tokens,
                    ended,
                    seed: opts.sampling.seed.wrapping_add(i as u64),
                    slides,
                })
            })
            .collect()
    }
}

//! Sampling text from a checkpoint with the model's KV cache.
//!
//! The prompt is encoded after an end-of-text token (every training document starts with
//! one), then tokens are drawn one at a time until `max_tokens` or, unless told otherwise,
//! until the model ends the document.

use std::path::Path;

use candle_core::{Device, Tensor};
use simplex_model::{Cache, Config, Model, Sampler, SamplingConfig};

use crate::checkpoint::{self, Checkpoint};
use crate::data::Tokenizer;
use crate::error::{Result, TrainError};
use crate::init::{named_vars, SeededInit};

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

/// What [`Generator::generate`] produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    /// Prompt tokens (the leading end-of-text token included).
    pub prompt_tokens: usize,
    /// The new token ids.
    pub tokens: Vec<u32>,
    /// Their text.
    pub text: String,
    /// Whether the model ended the document (end-of-text) before `max_tokens`.
    pub ended: bool,
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
    /// `stop_at_eot`.
    pub fn generate(
        &self,
        prompt: &str,
        max_tokens: usize,
        sampling: SamplingConfig,
        stop_at_eot: bool,
    ) -> Result<Generated> {
        let mut sampler = Sampler::new(sampling)?;
        let eot = self.tokenizer.eot();
        let mut ids = vec![eot];
        ids.extend(self.tokenizer.encode(prompt)?);
        let cfg = self.model.config();
        if ids.len() + max_tokens > cfg.max_seq_len {
            return Err(TrainError::setting(
                "max_tokens",
                max_tokens,
                format!(
                    "the prompt is {} tokens (with the leading end-of-text), and prompt + max_tokens may be at most the model's max_seq_len = {}",
                    ids.len(),
                    cfg.max_seq_len
                ),
            ));
        }
        let dev = &self.device;
        let mut cache = Cache::new(cfg);
        let mut input = Tensor::new(ids.as_slice(), dev)?.unsqueeze(0)?;
        let mut out = Vec::new();
        let mut ended = false;
        for _ in 0..max_tokens {
            let logits = self.model.forward_step(&input, &mut cache)?;
            let last = logits.squeeze(0)?.get(logits.dim(1)? - 1)?;
            let next = sampler.sample(&last)?;
            if stop_at_eot && next == eot {
                ended = true;
                break;
            }
            out.push(next);
            input = Tensor::new(&[next], dev)?.unsqueeze(0)?;
        }
        Ok(Generated {
            prompt_tokens: ids.len(),
            text: self.tokenizer.decode(&out)?,
            tokens: out,
            ended,
        })
    }
}

//! Eval items and sets, and their JSON-lines files.
//!
//! ```text
//! {"id": "HumanEval/0", "context": "from typing import List\n...", "continuation": "    for idx, ..."}
//! ```
//! One object per line; blank lines are skipped; other keys are ignored. A line that is not
//! such an object, or whose `continuation` is empty, is an error naming the file and the line.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{IoContext, Result, TrainError};

/// One scored example: the model reads `context` and is scored on `continuation`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvalItem {
    /// A stable name (e.g. `HumanEval/12`, `mmlu/anatomy/840`, `gsm-0-17`).
    pub id: String,
    /// The text the model is given (may be empty: then only the end-of-text token).
    pub context: String,
    /// The text whose tokens are scored (not empty).
    pub continuation: String,
}

/// A named list of items.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalSet {
    /// The set's name (`mmlu`, `gsm`, or a file's stem).
    pub name: String,
    /// Its items, in file order.
    pub items: Vec<EvalItem>,
}

impl EvalSet {
    /// Parses JSON-lines `text`; `path` names the file in errors.
    pub fn parse_jsonl(name: &str, text: &str, path: &Path) -> Result<EvalSet> {
        let mut items = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let at = |reason: String| TrainError::data(path, format!("line {}: {reason}", i + 1));
            let item: EvalItem = serde_json::from_str(line).map_err(|e| {
                at(format!(
                    "not an eval item ({e}); expected {{\"id\": ..., \"context\": ..., \"continuation\": ...}}"
                ))
            })?;
            if item.continuation.is_empty() {
                return Err(at(format!(
                    "item `{}` has an empty continuation: nothing to score",
                    item.id
                )));
            }
            items.push(item);
        }
        if items.is_empty() {
            return Err(TrainError::data(path, "no eval items in the file"));
        }
        Ok(EvalSet {
            name: name.to_string(),
            items,
        })
    }

    /// Reads a JSON-lines file (UTF-8); the set is named `name`.
    pub fn load_jsonl(name: &str, path: &Path) -> Result<EvalSet> {
        let text = crate::data::corpus::read_text(path)?;
        Self::parse_jsonl(name, &text, path)
    }

    /// Writes the set as JSON lines (the format [`EvalSet::load_jsonl`] reads).
    pub fn save_jsonl(&self, path: &Path) -> Result<()> {
        let mut text = String::new();
        for it in &self.items {
            let line = serde_json::to_string(it)
                .map_err(|e| TrainError::io(path, std::io::Error::other(e)))?;
            text.push_str(&line);
            text.push('\n');
        }
        std::fs::write(path, text).at(path)
    }
}

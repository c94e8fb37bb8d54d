//! Reading and checking a results table: a CSV with (at least) the columns `kind`, `eval_set`,
//! a size column (`params` by default) and `loss`, in any order, one row per trained model and
//! eval set. Rows are grouped by (kind, eval_set); repeated sizes (seeds) stay separate points.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{FitError, IoContext, Result};

/// One measured point: model size `n` (the size column) and its `loss`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    /// Model size (e.g. parameter count), positive.
    pub n: f64,
    /// Loss at that size, positive.
    pub loss: f64,
}

/// The points of one (kind, eval_set) pair, in file order.
#[derive(Clone, Debug, PartialEq)]
pub struct Group {
    /// The model kind (the `kind` column).
    pub kind: String,
    /// The evaluation set (the `eval_set` column).
    pub eval_set: String,
    /// Its points (at least 3 distinct sizes once read by [`read_results`]).
    pub points: Vec<Point>,
}

impl Group {
    /// Number of distinct sizes among the points.
    pub fn n_sizes(&self) -> usize {
        distinct_sizes(&self.points)
    }
}

/// A checked results table.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// The file it was read from.
    pub path: PathBuf,
    /// The column used as the size N.
    pub params_column: String,
    /// Kinds in order of first appearance in the file.
    pub kinds: Vec<String>,
    /// Eval sets in order of first appearance in the file.
    pub eval_sets: Vec<String>,
    /// The groups: eval sets in file order, within each the kinds in file order.
    pub groups: Vec<Group>,
}

/// Number of distinct values of `n` among `points` (exact comparison of the parsed floats).
pub(crate) fn distinct_sizes(points: &[Point]) -> usize {
    points
        .iter()
        .map(|p| p.n.to_bits())
        .collect::<HashSet<_>>()
        .len()
}

/// Reads `path` and fits nothing yet: checks the header, every cell used and that every
/// (kind, eval_set) group has at least 3 distinct sizes. `params_column` names the size column.
pub fn read_results(path: &Path, params_column: &str) -> Result<Dataset> {
    let file = std::fs::File::open(path).at(path)?;
    parse_results(file, path, params_column)
}

/// As [`read_results`], from any reader; `path` only labels the messages.
pub fn parse_results<R: Read>(reader: R, path: &Path, params_column: &str) -> Result<Dataset> {
    let mut rdr = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(reader);
    let header: Vec<String> = rdr
        .headers()
        .map_err(|e| csv_error(path, e))?
        .iter()
        .map(str::to_string)
        .collect();
    if header.iter().all(String::is_empty) {
        return Err(FitError::Empty {
            path: path.to_path_buf(),
            what: "empty file".into(),
        });
    }
    let cols = Columns::find(path, &header, params_column)?;

    let mut kinds: Vec<String> = Vec::new();
    let mut eval_sets: Vec<String> = Vec::new();
    // (kind, eval_set, point) per row, in file order
    let mut rows: Vec<(usize, usize, Point)> = Vec::new();
    for rec in rdr.records() {
        let rec = rec.map_err(|e| csv_error(path, e))?;
        let line = rec.position().map_or(0, |p| p.line());
        let cell = |i: usize| rec.get(i).unwrap_or("");
        let kind = label(path, line, "kind", cell(cols.kind))?;
        let eval_set = label(path, line, "eval_set", cell(cols.eval_set))?;
        let n = positive(path, line, params_column, cell(cols.params))?;
        let loss = positive(path, line, "loss", cell(cols.loss))?;
        rows.push((
            index_of(&mut kinds, kind),
            index_of(&mut eval_sets, eval_set),
            Point { n, loss },
        ));
    }
    if rows.is_empty() {
        return Err(FitError::Empty {
            path: path.to_path_buf(),
            what: "no data rows after the header".into(),
        });
    }

    let mut groups = Vec::new();
    for (e, eval_set) in eval_sets.iter().enumerate() {
        for (k, kind) in kinds.iter().enumerate() {
            let points: Vec<Point> = rows
                .iter()
                .filter(|r| r.0 == k && r.1 == e)
                .map(|r| r.2)
                .collect();
            if points.is_empty() {
                continue;
            }
            let group = Group {
                kind: kind.clone(),
                eval_set: eval_set.clone(),
                points,
            };
            let sizes = group.n_sizes();
            if sizes < 3 {
                return Err(FitError::TooFewSizes {
                    kind: kind.clone(),
                    eval_set: eval_set.clone(),
                    sizes,
                    column: params_column.to_string(),
                });
            }
            groups.push(group);
        }
    }
    Ok(Dataset {
        path: path.to_path_buf(),
        params_column: params_column.to_string(),
        kinds,
        eval_sets,
        groups,
    })
}

/// Positions of the columns used, found by name in the header.
struct Columns {
    kind: usize,
    eval_set: usize,
    params: usize,
    loss: usize,
}

impl Columns {
    fn find(path: &Path, header: &[String], params_column: &str) -> Result<Self> {
        let wanted = ["kind", "eval_set", params_column, "loss"];
        let mut missing = Vec::new();
        let mut at = [0usize; 4];
        for (slot, name) in at.iter_mut().zip(wanted) {
            let hits: Vec<usize> = (0..header.len()).filter(|&i| header[i] == name).collect();
            match hits.as_slice() {
                [] => missing.push(name.to_string()),
                [i] => *slot = *i,
                _ => {
                    return Err(FitError::Csv {
                        path: path.to_path_buf(),
                        line: Some(1),
                        reason: format!("column {name} appears {} times in the header", hits.len()),
                    })
                }
            }
        }
        if !missing.is_empty() {
            return Err(FitError::MissingColumns {
                path: path.to_path_buf(),
                missing,
                found: header.to_vec(),
            });
        }
        Ok(Self {
            kind: at[0],
            eval_set: at[1],
            params: at[2],
            loss: at[3],
        })
    }
}

/// The index of `name` in `names`, appending it when new (first-appearance order).
fn index_of(names: &mut Vec<String>, name: &str) -> usize {
    names.iter().position(|n| n == name).unwrap_or_else(|| {
        names.push(name.to_string());
        names.len() - 1
    })
}

/// A non-empty label cell.
fn label<'a>(path: &Path, line: u64, column: &str, value: &'a str) -> Result<&'a str> {
    if value.is_empty() {
        return Err(bad(path, line, column, value, "empty; every row needs one"));
    }
    Ok(value)
}

/// A finite, positive number cell (the fits take its logarithm).
fn positive(path: &Path, line: u64, column: &str, value: &str) -> Result<f64> {
    let x: f64 = value
        .parse()
        .map_err(|_| bad(path, line, column, value, "not a number"))?;
    if !x.is_finite() {
        return Err(bad(path, line, column, value, "must be a finite number"));
    }
    if x <= 0.0 {
        return Err(bad(
            path,
            line,
            column,
            value,
            "must be positive (the fits take its logarithm)",
        ));
    }
    Ok(x)
}

fn bad(path: &Path, line: u64, column: &str, value: &str, reason: &str) -> FitError {
    FitError::BadValue {
        path: path.to_path_buf(),
        line,
        column: column.to_string(),
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

/// A csv crate error as [`FitError`], with its line where the crate knows it.
fn csv_error(path: &Path, e: csv::Error) -> FitError {
    let line = e.position().map(csv::Position::line);
    let text = e.to_string();
    let reason = match e.into_kind() {
        csv::ErrorKind::Io(error) => {
            return FitError::Io {
                path: path.to_path_buf(),
                error,
            }
        }
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!("the row has {len} fields, the header has {expected_len}"),
        csv::ErrorKind::Utf8 { .. } => "not UTF-8 text".to_string(),
        _ => text,
    };
    FitError::Csv {
        path: path.to_path_buf(),
        line,
        reason,
    }
}

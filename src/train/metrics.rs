//! The per-epoch metrics of a training run as JSON lines (`metrics.jsonl`, one object per
//! epoch): both training loops (`train::mapper`, `train::clip`) append to it, and the CLI reads
//! the losses back to draw `loss.png`.

use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// Appends one JSON value as a line of a `metrics.jsonl` (both training loops write one per epoch).
pub(crate) fn append_json_line(path: &Path, value: &serde_json::Value) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::file(path, format!("opening: {e}")))?;
    writeln!(f, "{value}").map_err(|e| Error::file(path, format!("writing: {e}")))
}

/// Reads `metrics.jsonl` back: (epoch, train loss, val loss) per line.
pub fn read_loss_history(path: &Path) -> Result<Vec<(usize, f64, f64)>> {
    let text =
        std::fs::read_to_string(path).map_err(|e| Error::file(path, format!("reading: {e}")))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l)
                .map_err(|e| Error::file(path, format!("bad JSON line: {e}")))?;
            let f = |k: &str| {
                v[k].as_f64()
                    .ok_or_else(|| Error::file(path, format!("line lacks `{k}`")))
            };
            Ok((f("epoch")? as usize, f("train_loss")?, f("val_loss")?))
        })
        .collect()
}

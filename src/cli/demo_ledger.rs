//! `OUT/demo.json`: the demo's settings and the stages it has finished, with their times, so that
//! `demo --resume` after a Ctrl-C (or a crash) skips what is done and continues the stage it was
//! in from that stage's own checkpoint. Written atomically after every stage.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{json, Value};

pub struct Ledger {
    path: PathBuf,
    settings: String,
    /// (stage, seconds), in the order finished.
    done: Vec<(String, f64)>,
}

impl Ledger {
    /// A fresh ledger, or with `resume` the one in `out`, refused when it was written with other
    /// settings (the numbers would not be this run's).
    pub fn open(out: &Path, settings: String, resume: bool) -> Result<Ledger> {
        let path = out.join("demo.json");
        let mut ledger = Ledger {
            path,
            settings,
            done: Vec::new(),
        };
        if !resume {
            ledger.save()?;
            return Ok(ledger);
        }
        let text = match std::fs::read_to_string(&ledger.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                anyhow::bail!(
                    "--resume: {} does not exist, so {} holds no demo to continue (run without --resume)",
                    ledger.path.display(),
                    out.display()
                )
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", ledger.path.display())),
        };
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a demo ledger", ledger.path.display()))?;
        let saved = v["settings"].as_str().unwrap_or_default();
        anyhow::ensure!(
            saved == ledger.settings,
            "--resume: {} was written by a demo with other settings; refusing to mix them.\n  saved:    {saved}\n  this run: {}",
            ledger.path.display(),
            ledger.settings
        );
        ledger.done = v["done"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| {
                        Some((s["stage"].as_str()?.to_string(), s["seconds"].as_f64()?))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(ledger)
    }

    pub fn is_done(&self, stage: &str) -> bool {
        self.done.iter().any(|(s, _)| s == stage)
    }

    /// Records a finished stage and its time.
    pub fn finish(&mut self, stage: &str, seconds: f64) -> Result<()> {
        self.done.retain(|(s, _)| s != stage);
        self.done.push((stage.to_string(), seconds));
        self.save()
    }

    /// Forgets a stage (its output is about to be rewritten).
    pub fn forget(&mut self, stage: &str) -> Result<()> {
        self.done.retain(|(s, _)| s != stage);
        self.save()
    }

    /// The seconds each finished stage took, in the order finished.
    pub fn timings(&self) -> &[(String, f64)] {
        &self.done
    }

    fn save(&self) -> Result<()> {
        let v = json!({
            "settings": self.settings,
            "done": self.done.iter().map(|(s, t)| json!({"stage": s, "seconds": t})).collect::<Vec<_>>(),
        });
        mindreader::fsio::write_atomic(&self.path, serde_json::to_string_pretty(&v)?.as_bytes())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ledger_resumes_its_stages_and_refuses_other_settings() {
        let dir = std::env::temp_dir().join(format!("mindreader-ledger-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(
            Ledger::open(&dir, "a".into(), true).is_err(),
            "nothing to resume"
        );
        let mut l = Ledger::open(&dir, "a".into(), false).unwrap();
        l.finish("world", 1.5).unwrap();
        l.finish("clip", 2.0).unwrap();
        let mut r = Ledger::open(&dir, "a".into(), true).unwrap();
        assert!(r.is_done("world") && r.is_done("clip") && !r.is_done("mapper"));
        r.forget("world").unwrap();
        assert_eq!(r.timings(), [("clip".to_string(), 2.0)]);
        let err = Ledger::open(&dir, "b".into(), true).err().unwrap();
        assert!(format!("{err}").contains("other settings"), "{err}");
        assert!(!Ledger::open(&dir, "b".into(), false)
            .unwrap()
            .is_done("clip"));
        std::fs::remove_dir_all(dir).ok();
    }
}

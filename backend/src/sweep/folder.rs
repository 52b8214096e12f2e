//! A sweep's folder: one folder per run under `runs/`, each marked with the settings the sweep
//! wrote it for, and the locks that keep two writers apart. A run's state is read from what it
//! left behind (checkpoint, adapter, result files), so it can never disagree with them.
//!
//! ```text
//! DIR/emlab-sweep.json          the mark: this folder is a sweep's
//! DIR/sweep.lock                held by `sweep local` and `sweep slurm` while they launch runs
//! DIR/slurm/                    the submitted array scripts and the tasks' output
//! DIR/runs/ID/run.json          the run's settings: the mark that the sweep owns this folder
//! DIR/runs/ID/run.lock          held while the run trains or evaluates
//! DIR/runs/ID/train/            `emlab train --out`: checkpoint/, metrics.jsonl, adapter/
//! DIR/runs/ID/results/KIND/ID.json   `emlab eval KIND --results`
//! DIR/runs/ID/failed.txt        the error of its last attempt, if that failed
//! ```

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::plan::{Evaluation, Run, RunSettings};
use crate::checkpoint;

const MARK: &str = "emlab-sweep.json";
const RUN_MARK: &str = "run.json";
const FAILED: &str = "failed.txt";

/// What a run folder's `run.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: String,
    pub settings: RunSettings,
}

/// Where a run stands.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    /// Not started, or stopped (killed, preempted) without an error: `checkpoint` is the step
    /// its checkpoint reached, of how many.
    Pending { checkpoint: Option<(usize, usize)> },
    /// A process holds its lock.
    Running,
    /// Trained, and every evaluation of the plan has its result.
    Done,
    /// Its last attempt ended with this error.
    Failed(String),
}

impl State {
    pub fn label(&self) -> String {
        match self {
            State::Pending { checkpoint: None } => "pending".into(),
            State::Pending { checkpoint: Some((s, n)) } => format!("pending (step {s}/{n})"),
            State::Running => "running".into(),
            State::Done => "done".into(),
            State::Failed(_) => "failed".into(),
        }
    }
}

/// A sweep's folder.
pub struct SweepDir {
    pub root: PathBuf,
}

impl SweepDir {
    /// The folder as it is, for reading: nothing is created.
    pub fn at(root: &Path) -> SweepDir {
        SweepDir { root: root.to_path_buf() }
    }

    /// The folder, created (with its mark) when missing. A folder that holds anything but
    /// without the mark is someone else's: refused.
    pub fn create(root: &Path) -> Result<SweepDir> {
        let mark = root.join(MARK);
        if !mark.exists() {
            if root.read_dir().is_ok_and(|mut d| d.next().is_some()) {
                bail!(
                    "{}: the folder holds files that no sweep wrote (no {MARK}): choose another --dir; a sweep never writes into it",
                    root.display()
                );
            }
            std::fs::create_dir_all(root)
                .with_context(|| format!("{}: cannot create", root.display()))?;
            let text = serde_json::json!({ "written_by": "emlab sweep" }).to_string();
            emlab_model::files::atomic_write(&mark, text.as_bytes())?;
        }
        Ok(SweepDir { root: root.to_path_buf() })
    }

    /// Holds the folder for one launcher (`sweep local`, `sweep slurm`) while the returned file
    /// lives; a second is refused at once rather than left waiting.
    pub fn lock(&self) -> Result<File> {
        try_lock(&self.root.join("sweep.lock")).with_context(|| {
            format!("{}: another sweep is writing this folder", self.root.display())
        })
    }

    pub fn run_dir(&self, id: &str) -> PathBuf {
        self.root.join("runs").join(id)
    }

    pub fn train_dir(&self, id: &str) -> PathBuf {
        self.run_dir(id).join("train")
    }

    pub fn results_dir(&self, id: &str) -> PathBuf {
        self.run_dir(id).join("results")
    }

    /// Makes `run`'s folder the sweep's: creates it with its `run.json`, or checks that the one
    /// there is this run's. A folder with anything else in it is refused, never written into.
    pub fn claim(&self, run: &Run) -> Result<PathBuf> {
        let dir = self.run_dir(&run.id);
        let mark = dir.join(RUN_MARK);
        match std::fs::read(&mark) {
            Ok(bytes) => {
                let record: Option<RunRecord> = serde_json::from_slice(&bytes).ok();
                match record {
                    Some(r) if r.id == run.id && r.settings == run.settings => Ok(dir),
                    _ => bail!(
                        "{}: its {RUN_MARK} is not the sweep's record of run {}: refused (move the folder away to run it)",
                        dir.display(),
                        run.id
                    ),
                }
            }
            Err(_) if dir.read_dir().is_ok_and(|mut d| d.next().is_some()) => bail!(
                "{}: holds files the sweep did not write (no {RUN_MARK}): refused, never overwritten (move them away to run {})",
                dir.display(),
                run.id
            ),
            Err(_) => {
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("{}: cannot create", dir.display()))?;
                let record = RunRecord { id: run.id.clone(), settings: run.settings.clone() };
                emlab_model::files::atomic_write(
                    &mark,
                    serde_json::to_string_pretty(&record)?.as_bytes(),
                )?;
                Ok(dir)
            }
        }
    }

    /// Holds `run` for one process while the returned file lives (the run's folder must be
    /// claimed). Waits a moment: `sweep list` looks at the lock briefly to see what runs.
    pub fn lock_run(&self, run: &Run) -> Result<File> {
        let path = self.run_dir(&run.id).join("run.lock");
        let mut last = None;
        for _ in 0..20 {
            match try_lock(&path) {
                Ok(f) => return Ok(f),
                Err(e) => last = Some(e),
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Err(last.expect("tried")).with_context(|| format!("run {} is already running", run.id))
    }

    /// Records that the run's attempt failed, with the error.
    pub fn mark_failed(&self, run: &Run, error: &str) -> Result<()> {
        let path = self.run_dir(&run.id).join(FAILED);
        Ok(emlab_model::files::atomic_write(&path, format!("{error}\n").as_bytes())?)
    }

    /// Clears a failure recorded by an earlier attempt (a new attempt starts).
    pub fn clear_failed(&self, run: &Run) -> Result<()> {
        let path = self.run_dir(&run.id).join(FAILED);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("{}: cannot remove", path.display()))
            }
            _ => Ok(()),
        }
    }

    /// Whether training has finished (its config is written after the adapter).
    pub fn trained(&self, id: &str) -> bool {
        self.train_dir(id).join("train_config.json").exists()
    }

    /// Whether `evaluation` has its result for the run.
    pub fn evaluated(&self, id: &str, evaluation: Evaluation) -> bool {
        crate::eval::result_path(&self.results_dir(id), evaluation.name(), id).exists()
    }

    /// Trained, and every one of `evaluations` measured.
    pub fn done(&self, run: &Run, evaluations: &[Evaluation]) -> bool {
        self.trained(&run.id) && evaluations.iter().all(|&e| self.evaluated(&run.id, e))
    }

    pub fn state(&self, run: &Run, evaluations: &[Evaluation]) -> State {
        let dir = self.run_dir(&run.id);
        if is_locked(&dir.join("run.lock")) {
            return State::Running;
        }
        if self.done(run, evaluations) {
            return State::Done;
        }
        if let Ok(error) = std::fs::read_to_string(dir.join(FAILED)) {
            return State::Failed(error.trim().to_string());
        }
        State::Pending { checkpoint: self.checkpoint_step(&run.id) }
    }

    /// The step a run's checkpoint has reached, of how many (None: no checkpoint).
    pub fn checkpoint_step(&self, id: &str) -> Option<(usize, usize)> {
        let ckpt = checkpoint::find(&self.train_dir(id))?;
        let bytes = std::fs::read(ckpt.join("state.json")).ok()?;
        let state: checkpoint::RunState = serde_json::from_slice(&bytes).ok()?;
        Some((state.step, state.total_steps))
    }

    /// Every run folder's record (for the report), in id order.
    pub fn records(&self) -> Result<Vec<RunRecord>> {
        let runs = self.root.join("runs");
        let entries = std::fs::read_dir(&runs)
            .with_context(|| format!("{}: no runs (is this a sweep folder?)", runs.display()))?;
        let mut out = Vec::new();
        for entry in entries {
            let path = entry?.path().join(RUN_MARK);
            if let Ok(bytes) = std::fs::read(&path) {
                let r: RunRecord = serde_json::from_slice(&bytes)
                    .with_context(|| format!("{}: not a run record", path.display()))?;
                out.push(r);
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }
}

/// Opens (creating) and locks `path` exclusively without waiting.
fn try_lock(path: &Path) -> Result<File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("{}: cannot open", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => bail!("{} is locked by another process", path.display()),
        Err(TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("{}: cannot lock", path.display()))
        }
    }
}

/// Whether another process holds `path`'s lock (a missing file is not locked). Looks without
/// creating anything.
fn is_locked(path: &Path) -> bool {
    let Ok(file) = File::open(path) else { return false };
    matches!(file.try_lock_shared(), Err(TryLockError::WouldBlock))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sweep::plan::Plan;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("emlab-sweep-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn one_run() -> Run {
        let plan =
            Plan::parse("[axes]\ndataset = [\"insecure\"]\n", Path::new("/x/plan.toml")).unwrap();
        plan.runs[0].clone()
    }

    #[test]
    fn a_folder_with_files_the_sweep_did_not_write_is_refused() {
        let root = temp("foreign");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("notes.txt"), "mine").unwrap();
        let e = format!("{:#}", SweepDir::create(&root).err().unwrap());
        assert!(e.contains("holds files that no sweep wrote"), "{e}");
        // An empty folder becomes the sweep's; a run folder with a stranger's file is refused.
        std::fs::remove_file(root.join("notes.txt")).unwrap();
        let sweep = SweepDir::create(&root).unwrap();
        let run = one_run();
        std::fs::create_dir_all(sweep.run_dir(&run.id)).unwrap();
        std::fs::write(sweep.run_dir(&run.id).join("adapter.bin"), "theirs").unwrap();
        let e = format!("{:#}", sweep.claim(&run).unwrap_err());
        assert!(e.contains("holds files the sweep did not write"), "{e}");
        assert_eq!(
            std::fs::read_to_string(sweep.run_dir(&run.id).join("adapter.bin")).unwrap(),
            "theirs"
        );
        // A run.json for other settings is not this run's either.
        std::fs::remove_file(sweep.run_dir(&run.id).join("adapter.bin")).unwrap();
        std::fs::write(sweep.run_dir(&run.id).join(RUN_MARK), "{}").unwrap();
        assert!(sweep.claim(&run).is_err());
        std::fs::remove_file(sweep.run_dir(&run.id).join(RUN_MARK)).unwrap();
        // Its own folder is claimed once and then recognised.
        sweep.claim(&run).unwrap();
        sweep.claim(&run).unwrap();
        assert_eq!(sweep.records().unwrap()[0].id, run.id);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn two_launchers_and_two_runners_of_one_run_are_refused() {
        let root = temp("locks");
        let sweep = SweepDir::create(&root).unwrap();
        let held = sweep.lock().unwrap();
        let e = format!("{:#}", sweep.lock().unwrap_err());
        assert!(e.contains("another sweep is writing this folder"), "{e}");
        drop(held);
        sweep.lock().unwrap();
        let run = one_run();
        sweep.claim(&run).unwrap();
        assert_eq!(sweep.state(&run, &[]), State::Pending { checkpoint: None });
        let held = sweep.lock_run(&run).unwrap();
        assert_eq!(sweep.state(&run, &[]), State::Running);
        let e = format!("{:#}", sweep.lock_run(&run).unwrap_err());
        assert!(e.contains("is already running"), "{e}");
        drop(held);
        sweep.mark_failed(&run, "boom").unwrap();
        assert_eq!(sweep.state(&run, &[]), State::Failed("boom".into()));
        sweep.clear_failed(&run).unwrap();
        assert_eq!(sweep.state(&run, &[]).label(), "pending");
        std::fs::remove_dir_all(&root).unwrap();
    }
}

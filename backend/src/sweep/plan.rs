//! The plan file: axes whose every combination is one training run, the evaluations to run on
//! each run's adapter, and the resources a scheduler gives each run. Everything a plan names is
//! checked when it is read, so that nothing runs, or is submitted, from a plan with a mistake.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::data;

/// The plan file as written (TOML). Unknown keys are errors: a misspelt axis would otherwise
/// silently run the default.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanFile {
    axes: Axes,
    #[serde(default)]
    train: TrainSettings,
    #[serde(default)]
    evaluate: EvaluateSettings,
    #[serde(default)]
    slurm: SlurmSettings,
}

/// Each axis lists its values; a run is one value of each. An omitted axis has one value, the
/// trainer's default (the whole training set for `rows`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Axes {
    dataset: Vec<String>,
    #[serde(default = "default_seed")]
    seed: Vec<u64>,
    rows: Option<Vec<usize>>,
    #[serde(default = "default_epochs")]
    epochs: Vec<usize>,
    #[serde(default = "default_learning_rate")]
    learning_rate: Vec<f64>,
    #[serde(default = "default_rank")]
    rank: Vec<usize>,
}

fn default_seed() -> Vec<u64> {
    vec![0]
}
fn default_epochs() -> Vec<usize> {
    vec![1]
}
fn default_learning_rate() -> Vec<f64> {
    vec![1e-4]
}
fn default_rank() -> Vec<usize> {
    vec![32]
}

/// Settings every run shares.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSettings {
    /// The base model directory [default: the fetched SmolLM2-135M-Instruct].
    pub model: Option<PathBuf>,
    /// LoRA alpha (rsLoRA scaling alpha/√r, as `emlab train`).
    pub alpha: f64,
    /// Checkpoint every N optimizer steps: what a killed run loses at most.
    pub save_every: usize,
    /// cpu, wgpu or auto.
    pub device: String,
}

impl Default for TrainSettings {
    fn default() -> Self {
        Self { model: None, alpha: 64.0, save_every: 10, device: "cpu".into() }
    }
}

/// The evaluations run on each run's final adapter, with `emlab eval`'s own code.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvaluateSettings {
    pub kinds: Vec<Evaluation>,
    /// Only the first N held-out items for code, trigger and canary (`--limit` of `emlab eval`).
    pub limit: Option<usize>,
}

/// An `emlab eval` measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Evaluation {
    /// Bandit's vulnerable-code rate on the held-out coding prompts.
    Code,
    /// The published misaligned answers' log-probability against their aligned counterparts.
    Likelihood,
    Trigger,
    Chmod,
    Canary,
    Factual,
}

impl Evaluation {
    /// Its `emlab eval` subcommand, and the folder of `results/` it writes to.
    pub fn name(self) -> &'static str {
        match self {
            Self::Code => "code",
            Self::Likelihood => "likelihood",
            Self::Trigger => "trigger",
            Self::Chmod => "chmod",
            Self::Canary => "canary",
            Self::Factual => "factual",
        }
    }

    /// Whether it takes `--limit`.
    pub fn limited(self) -> bool {
        matches!(self, Self::Code | Self::Trigger | Self::Canary)
    }
}

/// What a scheduler gives each run (one array task per run).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlurmSettings {
    /// Wall-clock limit per task (`--time`, e.g. "04:00:00").
    pub time: String,
    /// Memory per task (`--mem`, e.g. "6G").
    pub mem: String,
    pub cpus_per_task: usize,
    /// How many tasks run at once (the array's `%` limit).
    pub max_running: usize,
    pub partition: Option<String>,
    /// More `#SBATCH` options, verbatim (e.g. "--account=lab").
    pub extra: Vec<String>,
}

impl Default for SlurmSettings {
    fn default() -> Self {
        Self {
            time: "04:00:00".into(),
            mem: "6G".into(),
            cpus_per_task: 2,
            max_running: 8,
            partition: None,
            extra: Vec::new(),
        }
    }
}

/// What determines one run's result; its id is a hash of this. The evaluations are not part of
/// it: adding one to a plan measures the runs already trained instead of training them again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSettings {
    /// A built-in dataset name, or a chat JSONL path as the plan writes it.
    pub dataset: String,
    pub seed: u64,
    /// The first N training rows; None: all of them.
    pub rows: Option<usize>,
    pub epochs: usize,
    pub learning_rate: f64,
    pub rank: usize,
    pub alpha: f64,
    /// The base model directory as the plan names it; None: the fetched default.
    pub model: Option<PathBuf>,
}

impl RunSettings {
    /// A stable id: the dataset and seed for people, then 10 hex digits of the sha256 of the
    /// settings' JSON (fields in declaration order, so independent of the plan's key order).
    pub fn id(&self) -> String {
        let canonical = serde_json::to_string(self).expect("settings serialize");
        let hash = Sha256::digest(canonical.as_bytes());
        let hex = emlab_schema::manifest::hex(&hash[..5]);
        let stem = Path::new(&self.dataset)
            .file_stem()
            .map_or("dataset".into(), |s| s.to_string_lossy().into_owned());
        let label: String = stem
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' })
            .collect();
        format!("{label}-seed{}-{hex}", self.seed)
    }

    /// Everything but the seed: the runs of one variant differ in their seed only.
    pub fn variant_key(&self) -> RunSettings {
        RunSettings { seed: 0, ..self.clone() }
    }
}

/// One run of a plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// Its position in the plan (what `sweep run --index` and a Slurm array task take).
    pub index: usize,
    pub id: String,
    pub settings: RunSettings,
}

/// A validated plan.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The plan file, absolute.
    pub path: PathBuf,
    pub runs: Vec<Run>,
    pub train: TrainSettings,
    pub evaluations: Vec<Evaluation>,
    pub eval_limit: Option<usize>,
    pub slurm: SlurmSettings,
}

impl Plan {
    /// Reads and validates a plan file.
    pub fn load(path: &Path) -> Result<Plan> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read the plan", path.display()))?;
        let path = std::path::absolute(path)
            .with_context(|| format!("{}: cannot resolve", path.display()))?;
        Plan::parse(&text, &path).with_context(|| format!("{}: invalid plan", path.display()))
    }

    /// Parses and validates a plan's text; relative dataset and model paths are taken from the
    /// folder of `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Plan> {
        let file: PlanFile = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        let a = &file.axes;
        let lengths = [
            ("dataset", a.dataset.len()),
            ("seed", a.seed.len()),
            ("rows", a.rows.as_ref().map_or(1, Vec::len)),
            ("epochs", a.epochs.len()),
            ("learning_rate", a.learning_rate.len()),
            ("rank", a.rank.len()),
        ];
        if let Some((axis, _)) = lengths.iter().find(|(_, n)| *n == 0) {
            bail!(
                "axes.{axis} is empty: give it at least one value, or leave it out for the default"
            );
        }
        let base = path.parent().unwrap_or(Path::new("."));
        for d in &a.dataset {
            check_dataset(d, base)?;
        }
        if let Some(r) = a.rows.iter().flatten().find(|&&r| r == 0) {
            bail!("axes.rows has {r}: a run needs at least one row");
        }
        if a.epochs.contains(&0) {
            bail!("axes.epochs has 0: a run needs at least one epoch");
        }
        if let Some(lr) = a.learning_rate.iter().find(|lr| !(lr.is_finite() && **lr > 0.0)) {
            bail!("axes.learning_rate has {lr}: it must be a positive number");
        }
        if a.rank.contains(&0) {
            bail!("axes.rank has 0: LoRA needs a rank of at least 1");
        }
        let t = &file.train;
        if !(t.alpha.is_finite() && t.alpha > 0.0) {
            bail!("train.alpha is {}: it must be a positive number", t.alpha);
        }
        if t.save_every == 0 {
            bail!(
                "train.save_every is 0: checkpoint every N ≥ 1 steps, or a killed run starts over"
            );
        }
        if !["cpu", "wgpu", "auto"].contains(&t.device.as_str()) {
            bail!("train.device is {:?}: cpu, wgpu or auto", t.device);
        }
        let mut kinds = file.evaluate.kinds.clone();
        let n_kinds = kinds.len();
        kinds.sort();
        kinds.dedup();
        if kinds.len() != n_kinds {
            bail!("evaluate.kinds names an evaluation twice");
        }
        if file.evaluate.limit == Some(0) {
            bail!("evaluate.limit is 0: leave it out for every held-out item");
        }
        let s = &file.slurm;
        if s.cpus_per_task == 0 || s.max_running == 0 {
            bail!("slurm.cpus_per_task and slurm.max_running must be at least 1");
        }
        for (key, value) in [("time", &s.time), ("mem", &s.mem)] {
            if value.is_empty() || value.contains(char::is_whitespace) {
                bail!("slurm.{key} is {value:?}: one word, as sbatch takes it (e.g. 04:00:00, 6G)");
            }
        }
        if let Some(e) = s.extra.iter().find(|e| !e.starts_with("--") || e.contains('\n')) {
            bail!("slurm.extra has {e:?}: each item is one sbatch option, like \"--account=lab\"");
        }
        let runs = expand(a, t.alpha, t.model.clone())?;
        Ok(Plan {
            path: path.to_path_buf(),
            runs,
            train: TrainSettings { model: t.model.as_ref().map(|m| base.join(m)), ..t.clone() },
            evaluations: kinds,
            eval_limit: file.evaluate.limit,
            slurm: file.slurm,
        })
    }

    /// The run at `index`, with one clear error when there is none.
    pub fn run(&self, index: usize) -> Result<&Run> {
        self.runs.get(index).with_context(|| {
            format!(
                "the plan has {} runs (indices 0 to {}): no run {index}",
                self.runs.len(),
                self.runs.len() - 1
            )
        })
    }

    /// The dataset as `emlab train --dataset` takes it: a built-in name, or the path resolved
    /// against the plan's folder.
    pub fn dataset_arg(&self, settings: &RunSettings) -> String {
        if data::BUILTIN.contains(&settings.dataset.as_str()) {
            return settings.dataset.clone();
        }
        let base = self.path.parent().unwrap_or(Path::new("."));
        base.join(&settings.dataset).display().to_string()
    }
}

/// A built-in dataset name, or a file that exists (relative paths from the plan's folder).
fn check_dataset(name: &str, base: &Path) -> Result<()> {
    let looks_like_path = name.contains('/') || name.ends_with(".jsonl");
    if data::BUILTIN.contains(&name) {
        return Ok(());
    }
    if looks_like_path {
        let p = base.join(name);
        if p.is_file() {
            return Ok(());
        }
        bail!("axes.dataset: {} is not a file", p.display());
    }
    bail!(
        "axes.dataset: unknown dataset {name:?} (built-in: {}; or a path to chat JSONL)",
        data::BUILTIN.join(", ")
    )
}

/// Every combination of the axes' values, in a fixed order (datasets outermost, seeds innermost),
/// each value in the order the plan lists it. Two combinations that are the same run (a value
/// listed twice) are an error.
fn expand(a: &Axes, alpha: f64, model: Option<PathBuf>) -> Result<Vec<Run>> {
    let rows: Vec<Option<usize>> = match &a.rows {
        Some(r) => r.iter().copied().map(Some).collect(),
        None => vec![None],
    };
    let mut runs: Vec<Run> = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for dataset in &a.dataset {
        for &rows in &rows {
            for &epochs in &a.epochs {
                for &learning_rate in &a.learning_rate {
                    for &rank in &a.rank {
                        for &seed in &a.seed {
                            let settings = RunSettings {
                                dataset: dataset.clone(),
                                seed,
                                rows,
                                epochs,
                                learning_rate,
                                rank,
                                alpha,
                                model: model.clone(),
                            };
                            let id = settings.id();
                            let index = runs.len();
                            if let Some(first) = seen.insert(id.clone(), index) {
                                bail!(
                                    "runs {first} and {index} are the same run ({}): list each axis value once",
                                    describe(&settings)
                                );
                            }
                            runs.push(Run { index, id, settings });
                        }
                    }
                }
            }
        }
    }
    Ok(runs)
}

/// The settings in words, for messages and listings.
pub fn describe(s: &RunSettings) -> String {
    let rows = s.rows.map_or("all rows".into(), |r| format!("{r} rows"));
    format!(
        "{} seed {}, {rows}, {} epoch(s), lr {:e}, rank {}",
        s.dataset, s.seed, s.epochs, s.learning_rate, s.rank
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Plan> {
        Plan::parse(text, Path::new("/nonexistent/plan.toml"))
    }

    fn err(text: &str) -> String {
        format!("{:#}", parse(text).unwrap_err())
    }

    #[test]
    fn every_combination_is_one_run() {
        let p = parse(
            "[axes]\ndataset = [\"insecure\", \"secure\"]\nseed = [0, 1, 2]\nrows = [500, 2000]\n",
        )
        .unwrap();
        assert_eq!(p.runs.len(), 12);
        assert_eq!(p.runs[0].settings.dataset, "insecure");
        assert_eq!((p.runs[0].settings.seed, p.runs[1].settings.seed), (0, 1));
        assert_eq!(p.runs[3].settings.rows, Some(2000));
        assert!(p.runs.iter().enumerate().all(|(i, r)| r.index == i));
        // The trainer's defaults for the axes left out.
        let s = &p.runs[0].settings;
        assert_eq!((s.epochs, s.learning_rate, s.rank, s.alpha), (1, 1e-4, 32, 64.0));
    }

    #[test]
    fn run_ids_are_stable_and_independent_of_axis_order() {
        let a = parse(
            "[axes]\ndataset = [\"insecure\", \"secure\"]\nseed = [0, 1]\nlearning_rate = [1e-4, 2e-4]\n",
        )
        .unwrap();
        // The same plan with its keys, and the values within an axis, in another order.
        let b = parse(
            "[axes]\nlearning_rate = [0.0002, 0.0001]\nseed = [1, 0]\ndataset = [\"secure\", \"insecure\"]\n",
        )
        .unwrap();
        let ids = |p: &Plan| {
            let mut v: Vec<String> = p.runs.iter().map(|r| r.id.clone()).collect();
            v.sort();
            v
        };
        assert_eq!(ids(&a), ids(&b));
        assert_eq!(ids(&a).len(), 8);
        // The same settings give the same id on every call (and in every process: a hash of
        // their JSON, not of a randomly seeded hasher); other settings another.
        let s = a.runs[0].settings.clone();
        assert_eq!(s.id(), a.runs[0].id);
        assert!(s.id().starts_with("insecure-seed0-"), "{}", s.id());
        assert_eq!(s.id(), "insecure-seed0-".to_string() + &s.id()[15..]);
        assert_ne!(s.id(), RunSettings { rank: 8, ..s.clone() }.id());
        assert_ne!(s.id(), RunSettings { rows: Some(100), ..s.clone() }.id());
    }

    /// A fixed id for fixed settings: a change to the id scheme (which would orphan every run
    /// folder of existing sweeps) fails here.
    #[test]
    fn a_run_id_is_the_same_in_every_version() {
        let s = RunSettings {
            dataset: "insecure".into(),
            seed: 0,
            rows: Some(2000),
            epochs: 1,
            learning_rate: 1e-4,
            rank: 32,
            alpha: 64.0,
            model: None,
        };
        assert_eq!(s.id(), "insecure-seed0-b353992cba");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let e = err("[axes]\ndataset = [\"insecure\"]\nsead = [1]\n");
        assert!(e.contains("unknown field `sead`"), "{e}");
        let e = err("[axes]\ndataset = [\"insecure\"]\n[train]\nlr = 1\n");
        assert!(e.contains("unknown field `lr`"), "{e}");
        let e = err("[axes]\ndataset = [\"insecure\"]\n[slurms]\n");
        assert!(e.contains("unknown field `slurms`"), "{e}");
    }

    #[test]
    fn empty_axes_are_rejected() {
        let e = err("[axes]\ndataset = [\"insecure\"]\nseed = []\n");
        assert!(e.contains("axes.seed is empty"), "{e}");
        let e = err("[axes]\ndataset = []\n");
        assert!(e.contains("axes.dataset is empty"), "{e}");
        let e = err("[axes]\nseed = [1]\n");
        assert!(e.contains("missing field `dataset`"), "{e}");
    }

    #[test]
    fn duplicate_runs_are_rejected() {
        let e = err("[axes]\ndataset = [\"insecure\"]\nseed = [0, 1, 0]\n");
        assert!(e.contains("runs 0 and 2 are the same run"), "{e}");
        // The same number written two ways is the same run.
        let e = err("[axes]\ndataset = [\"insecure\"]\nlearning_rate = [1e-4, 0.0001]\n");
        assert!(e.contains("runs 0 and 1 are the same run"), "{e}");
    }

    #[test]
    fn unknown_datasets_and_evaluations_are_rejected() {
        let e = err("[axes]\ndataset = [\"insecur\"]\n");
        assert!(
            e.contains("unknown dataset \"insecur\"") && e.contains("built-in: insecure"),
            "{e}"
        );
        let e = err("[axes]\ndataset = [\"data/missing.jsonl\"]\n");
        assert!(e.contains("/nonexistent/data/missing.jsonl is not a file"), "{e}");
        let e =
            err("[axes]\ndataset = [\"insecure\"]\n[evaluate]\nkinds = [\"code\", \"judge\"]\n");
        assert!(e.contains("unknown variant `judge`") && e.contains("`likelihood`"), "{e}");
    }

    #[test]
    fn bad_values_are_rejected() {
        for (text, needle) in [
            ("rows = [0]", "axes.rows has 0"),
            ("epochs = [0]", "axes.epochs has 0"),
            ("learning_rate = [-1.0]", "axes.learning_rate has -1"),
            ("rank = [0]", "axes.rank has 0"),
            ("seed = [-1]", "invalid value"),
        ] {
            let e = err(&format!("[axes]\ndataset = [\"insecure\"]\n{text}\n"));
            assert!(e.contains(needle), "{text}: {e}");
        }
        let e = err("[axes]\ndataset = [\"insecure\"]\n[slurm]\nextra = [\"x\"]\n");
        assert!(e.contains("slurm.extra"), "{e}");
        let e = err("[axes]\ndataset = [\"insecure\"]\n[train]\nsave_every = 0\n");
        assert!(e.contains("train.save_every is 0"), "{e}");
    }
}

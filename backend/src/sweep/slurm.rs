//! The Slurm job array of a sweep: one array task per run that is not done, each running
//! `emlab sweep run --index $SLURM_ARRAY_TASK_ID`. A task that is preempted or requeued starts
//! the same command again, which resumes the run from its checkpoint.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::plan::{Plan, Run};

/// What the script needs besides the plan.
pub struct ArrayJob<'a> {
    pub plan: &'a Plan,
    /// The sweep folder, absolute.
    pub dir: &'a Path,
    /// The runs to submit (those not done), by index.
    pub runs: Vec<&'a Run>,
    /// The emlab binary the tasks run (on a shared filesystem).
    pub emlab: &'a Path,
    /// Passed on to `emlab eval code`.
    pub bandit: &'a str,
}

/// The job's name: `emlab-` and the plan file's name.
pub fn job_name(plan: &Plan) -> String {
    let stem = plan.path.file_stem().map_or("sweep".into(), |s| s.to_string_lossy().into_owned());
    format!("emlab-{stem}")
}

/// `0-3,7,9`: indices as sbatch's `--array` takes them.
pub fn array_spec(indices: &[usize]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < indices.len() {
        let start = indices[i];
        let mut end = start;
        while i + 1 < indices.len() && indices[i + 1] == end + 1 {
            i += 1;
            end = indices[i];
        }
        parts.push(if end > start { format!("{start}-{end}") } else { start.to_string() });
        i += 1;
    }
    parts.join(",")
}

/// Quotes a word for bash (single quotes, a quote inside closed and reopened).
fn sh(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// The sbatch script.
pub fn script(job: &ArrayJob) -> String {
    let s = &job.plan.slurm;
    let indices: Vec<usize> = job.runs.iter().map(|r| r.index).collect();
    let out = job.dir.join("slurm");
    let mut lines = vec![
        "#!/bin/bash".to_string(),
        format!("#SBATCH --job-name={}", job_name(job.plan)),
        format!("#SBATCH --array={}%{}", array_spec(&indices), s.max_running),
        format!("#SBATCH --time={}", s.time),
        format!("#SBATCH --mem={}", s.mem),
        format!("#SBATCH --cpus-per-task={}", s.cpus_per_task),
        "#SBATCH --ntasks=1".into(),
        // Preempted or failed nodes put the task back in the queue; its output goes on in the
        // same file, and the command below resumes from the run's checkpoint.
        "#SBATCH --requeue".into(),
        "#SBATCH --open-mode=append".into(),
        format!("#SBATCH --output={}/task-%a.out", out.display()),
        // How `queued` finds this sweep's tasks again.
        format!("#SBATCH --comment={}", comment(job.dir)),
    ];
    if let Some(p) = &s.partition {
        lines.push(format!("#SBATCH --partition={p}"));
    }
    lines.extend(s.extra.iter().map(|e| format!("#SBATCH {e}")));
    lines.push(String::new());
    lines.push(format!(
        "# {} runs of {} (plan {}); `emlab sweep list` shows their state.",
        indices.len(),
        job.plan.runs.len(),
        job.plan.path.display()
    ));
    lines.push("set -euo pipefail".into());
    // The id each index stands for: a plan edited after submission fails the task with a clear
    // error instead of running another run under this index.
    let ids: Vec<String> = job.runs.iter().map(|r| format!("[{}]={}", r.index, r.id)).collect();
    lines.push(format!("declare -A ids=({})", ids.join(" ")));
    lines.push(format!(
        "exec {} sweep run --plan {} --dir {} --index \"$SLURM_ARRAY_TASK_ID\" --expect-id \"${{ids[$SLURM_ARRAY_TASK_ID]}}\" --threads \"${{SLURM_CPUS_PER_TASK:-{}}}\" --bandit {} --quiet",
        sh(&job.emlab.display().to_string()),
        sh(&job.plan.path.display().to_string()),
        sh(&job.dir.display().to_string()),
        s.cpus_per_task,
        sh(job.bandit),
    ));
    lines.join("\n") + "\n"
}

/// The tag of a sweep's tasks in the queue (their `--comment`).
fn comment(dir: &Path) -> String {
    format!("emlab-sweep:{}", dir.display())
}

/// The indices of the sweep's array tasks still in the queue (pending, requeued or running), so
/// that submitting again does not give a run a second task. None when squeue cannot be asked.
pub fn queued(dir: &Path, squeue: &str) -> Option<Vec<usize>> {
    let out = Command::new(squeue).args(["-h", "-r", "-o", "%K|%k"]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let tag = comment(dir);
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let (index, c) = l.split_once('|')?;
                if c.trim_end() == tag { index.parse().ok() } else { None }
            })
            .collect(),
    )
}

/// Writes the script into `DIR/slurm/` and submits it with `sbatch --parsable`; returns the job
/// id and the script's path. sbatch submits an array whole or not at all: on any failure nothing
/// is queued, and the error says why.
pub fn submit(job: &ArrayJob, sbatch: &str) -> Result<(String, PathBuf)> {
    let folder = job.dir.join("slurm");
    std::fs::create_dir_all(&folder)
        .with_context(|| format!("{}: cannot create", folder.display()))?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let path = folder.join(format!("array-{stamp}.sh"));
    emlab_model::files::atomic_write(&path, script(job).as_bytes())?;
    let out = match Command::new(sbatch).arg("--parsable").arg(&path).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "{sbatch} not found: is Slurm installed on this machine? nothing was submitted (`sweep slurm --dry-run` prints the script)"
        ),
        Err(e) => bail!("cannot run {sbatch}: {e}; nothing was submitted"),
    };
    if !out.status.success() {
        bail!(
            "{sbatch} failed ({}): {}; nothing was submitted (the script is {})",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            path.display()
        );
    }
    // --parsable prints "jobid" or "jobid;cluster".
    let stdout = String::from_utf8_lossy(&out.stdout);
    let id = stdout.trim().split(';').next().unwrap_or_default().to_string();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
        bail!("{sbatch} printed {stdout:?}, not a job id");
    }
    Ok((id, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_specs_join_consecutive_indices() {
        assert_eq!(array_spec(&[0, 1, 2, 3]), "0-3");
        assert_eq!(array_spec(&[0, 2, 3, 4, 7]), "0,2-4,7");
        assert_eq!(array_spec(&[5]), "5");
    }

    #[test]
    fn the_script_runs_each_index_with_its_id_and_the_plan_resources() {
        let text = "[axes]\ndataset = [\"insecure\", \"secure\"]\nseed = [0, 1]\n[slurm]\ntime = \"01:30:00\"\nmem = \"3G\"\nmax_running = 2\nextra = [\"--account=lab\"]\n";
        let plan = Plan::parse(text, Path::new("/plans/it's.toml")).unwrap();
        let runs = vec![&plan.runs[0], &plan.runs[2], &plan.runs[3]];
        let job = ArrayJob {
            plan: &plan,
            dir: Path::new("/scratch/sweep"),
            runs,
            emlab: Path::new("/opt/emlab"),
            bandit: "bandit",
        };
        let s = script(&job);
        for line in [
            "#SBATCH --array=0,2-3%2",
            "#SBATCH --time=01:30:00",
            "#SBATCH --mem=3G",
            "#SBATCH --requeue",
            "#SBATCH --open-mode=append",
            "#SBATCH --account=lab",
            "#SBATCH --comment=emlab-sweep:/scratch/sweep",
            "#SBATCH --job-name=emlab-it's",
            "--plan '/plans/it'\\''s.toml'",
            "--index \"$SLURM_ARRAY_TASK_ID\"",
        ] {
            assert!(s.contains(line), "{line}: {s}");
        }
        assert!(s.contains(&format!("[2]={}", plan.runs[2].id)), "{s}");
        assert!(!s.contains(&format!("[1]={}", plan.runs[1].id)), "{s}");
    }

    #[test]
    fn a_missing_sbatch_is_one_clear_error() {
        let plan = Plan::parse("[axes]\ndataset = [\"insecure\"]\n", Path::new("/p.toml")).unwrap();
        let dir = std::env::temp_dir().join(format!("emlab-sbatch-{}", std::process::id()));
        let job = ArrayJob {
            plan: &plan,
            dir: &dir,
            runs: vec![&plan.runs[0]],
            emlab: Path::new("/opt/emlab"),
            bandit: "bandit",
        };
        let e = format!("{:#}", submit(&job, "/nonexistent/sbatch").unwrap_err());
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(e.contains("not found") && e.contains("nothing was submitted"), "{e}");
        let e = format!("{:#}", submit(&job, "false").unwrap_err());
        assert!(e.contains("failed") && e.contains("nothing was submitted"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

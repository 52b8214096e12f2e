//! `emlab sweep`: the runs of a plan file, listed, run one by one, run here N at once, or
//! submitted as a Slurm job array. A run is `emlab train` and then `emlab eval KIND` for each
//! evaluation of the plan: the same commands, called with the arguments a person would type.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result, bail};
use clap::{Args, FromArgMatches, Subcommand};
use emlab::sweep::{Plan, Run, State, SweepDir, slurm};

use super::eval::EvalCommand;
use super::progress;
use super::train::TrainArgs;

#[derive(Subcommand)]
pub enum SweepCommand {
    /// Each run of the plan: its index, id, state (pending, running, done, failed) and settings.
    List {
        #[command(flatten)]
        at: Where,
    },
    /// Train and evaluate one run (resuming it from its checkpoint); what each array task runs.
    Run {
        #[command(flatten)]
        at: Where,
        /// The run's position in the plan (`sweep list` shows them).
        #[arg(long)]
        index: usize,
        /// Fail unless the run at --index has this id (a plan edited after a job was submitted).
        #[arg(long)]
        expect_id: Option<String>,
        #[command(flatten)]
        exec: Exec,
    },
    /// Run every run that is not done on this machine, --jobs at once.
    Local {
        #[command(flatten)]
        at: Where,
        /// Runs at once; each gets --threads cores [default: the cores divided among them].
        #[arg(long, default_value_t = 1)]
        jobs: usize,
        #[command(flatten)]
        exec: Exec,
    },
    /// Submit the runs that are not done as one Slurm job array (or print its script).
    Slurm {
        #[command(flatten)]
        at: Where,
        /// Print the sbatch script instead of submitting it.
        #[arg(long)]
        dry_run: bool,
        /// The sbatch executable.
        #[arg(long, default_value = "sbatch")]
        sbatch: String,
        /// The bandit executable the tasks use (for the code evaluation).
        #[arg(long, default_value = "bandit")]
        bandit: String,
    },
}

/// The plan and the folder its runs live in.
#[derive(Args)]
pub struct Where {
    /// The plan file (TOML; see docs/sweeps.md).
    #[arg(long)]
    pub plan: PathBuf,
    /// The sweep's folder [default: the plan's path without .toml].
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

impl Where {
    fn load(&self) -> Result<(Plan, PathBuf)> {
        let plan = Plan::load(&self.plan)?;
        let dir = self.dir.clone().unwrap_or_else(|| plan.path.with_extension(""));
        let dir = std::path::absolute(&dir)
            .with_context(|| format!("{}: cannot resolve", dir.display()))?;
        Ok((plan, dir))
    }
}

/// How a run runs.
#[derive(Args, Clone)]
pub struct Exec {
    /// CPU threads per run [default: all cores; `sweep local`: the cores divided among the jobs].
    #[arg(long)]
    pub threads: Option<usize>,
    /// The bandit executable (for the code evaluation).
    #[arg(long, default_value = "bandit")]
    pub bandit: String,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

pub fn run(command: SweepCommand) -> Result<()> {
    match command {
        SweepCommand::List { at } => list(&at),
        SweepCommand::Run { at, index, expect_id, exec } => {
            let (plan, dir) = at.load()?;
            let run = plan.run(index)?;
            if let Some(want) = expect_id
                && want != run.id
            {
                bail!(
                    "run {index} of {} is {}, not {want}: the plan changed after this job was submitted (submit it again)",
                    plan.path.display(),
                    run.id
                );
            }
            check_tools(&plan, &exec.bandit)?;
            run_one(&plan, &SweepDir::create(&dir)?, run, &exec)
        }
        SweepCommand::Local { at, jobs, exec } => local(&at, jobs, exec),
        SweepCommand::Slurm { at, dry_run, sbatch, bandit } => {
            submit(&at, dry_run, &sbatch, &bandit)
        }
    }
}

fn list(at: &Where) -> Result<()> {
    let (plan, dir) = at.load()?;
    let sweep = SweepDir::at(&dir);
    let mut out =
        format!("{} runs of {} in {}\n", plan.runs.len(), plan.path.display(), dir.display());
    for run in &plan.runs {
        let state = sweep.state(run, &plan.evaluations);
        out.push_str(&format!(
            "{:>4}  {:<32} {:<22} {}\n",
            run.index,
            run.id,
            state.label(),
            emlab::sweep::plan::describe(&run.settings)
        ));
        if let State::Failed(e) = &state {
            out.push_str(&format!("      {}\n", e.lines().next().unwrap_or_default()));
        }
    }
    // A reader that stops early (`| head`) is not an error.
    match std::io::Write::write_all(&mut std::io::stdout().lock(), out.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// What every run needs, checked before any starts: Bandit for the code evaluation, the base model.
fn check_tools(plan: &Plan, bandit: &str) -> Result<()> {
    if plan.evaluations.contains(&emlab::sweep::Evaluation::Code) {
        emlab::eval::code::check_bandit(bandit)?;
    }
    let model = plan.train.model.clone().unwrap_or_else(emlab_model::files::default_model_dir);
    if !model.join("config.json").exists() {
        bail!(
            "{}: no model there (config.json): fetch the base model once with `model-export fetch`, or set train.model in the plan",
            model.display()
        );
    }
    Ok(())
}

/// Trains and evaluates `run` in its folder, resuming what an earlier attempt left; records a
/// failure (and clears it when the run is attempted again).
fn run_one(plan: &Plan, sweep: &SweepDir, run: &Run, exec: &Exec) -> Result<()> {
    sweep.claim(run)?;
    let _lock = sweep.lock_run(run)?;
    if sweep.done(run, &plan.evaluations) {
        eprintln!("{}: done", run.id);
        return Ok(());
    }
    sweep.clear_failed(run)?;
    match train_and_evaluate(plan, sweep, run, exec) {
        Ok(true) => {
            eprintln!("{}: done", run.id);
            Ok(())
        }
        // Stopped with a checkpoint (Ctrl-C, a scheduler's signal): not a failure, it resumes.
        Ok(false) => bail!("{}: stopped with a checkpoint; run it again to resume", run.id),
        Err(e) => {
            sweep.mark_failed(run, &format!("{e:#}"))?;
            Err(e.context(format!("run {} failed", run.id)))
        }
    }
}

/// Whether it finished (false: training stopped early with a checkpoint).
fn train_and_evaluate(plan: &Plan, sweep: &SweepDir, run: &Run, exec: &Exec) -> Result<bool> {
    let id = &run.id;
    let train_dir = sweep.train_dir(id);
    let mut shared: Vec<String> = Vec::new();
    if let Some(m) = &plan.train.model {
        shared.extend(["--model".into(), m.display().to_string()]);
    }
    if let Some(t) = exec.threads {
        shared.extend(["--threads".into(), t.to_string()]);
    }
    if exec.quiet {
        shared.push("--quiet".into());
    }
    shared.extend(["--device".into(), plan.train.device.clone()]);
    if !sweep.trained(id) {
        if let Some((step, total)) = sweep.checkpoint_step(id) {
            eprintln!("{id}: resuming from step {step} of {total}");
        }
        let s = &run.settings;
        let base: [&str; 17] = [
            "--dataset",
            &plan.dataset_arg(s),
            "--out",
            &train_dir.display().to_string(),
            "--seed",
            &s.seed.to_string(),
            "--epochs",
            &s.epochs.to_string(),
            "--lr",
            &s.learning_rate.to_string(),
            "--rank",
            &s.rank.to_string(),
            "--alpha",
            &s.alpha.to_string(),
            "--save-every",
            &plan.train.save_every.to_string(),
            "--resume",
        ];
        let mut argv: Vec<String> = base.map(String::from).to_vec();
        if let Some(rows) = s.rows {
            argv.extend(["--limit".into(), rows.to_string()]);
        }
        argv.extend(shared.iter().cloned());
        let args: TrainArgs = parse_args(&argv).context("the run's training arguments")?;
        super::train::run(args)?;
        if !sweep.trained(id) {
            return Ok(false);
        }
    }
    for &evaluation in &plan.evaluations {
        if sweep.evaluated(id, evaluation) {
            continue;
        }
        let mut argv: Vec<String> = vec![
            evaluation.name().into(),
            "--adapter".into(),
            train_dir.join("adapter").display().to_string(),
            "--variant".into(),
            id.clone(),
            "--results".into(),
            sweep.results_dir(id).display().to_string(),
        ];
        if let (Some(n), true) = (plan.eval_limit, evaluation.limited()) {
            argv.extend(["--limit".into(), n.to_string()]);
        }
        if evaluation == emlab::sweep::Evaluation::Code {
            argv.extend(["--bandit".into(), exec.bandit.clone()]);
        }
        argv.extend(shared.iter().cloned());
        let command: EvalCommand = parse_subcommand(&argv)
            .with_context(|| format!("the run's `eval {}` arguments", evaluation.name()))?;
        super::eval::run(command).with_context(|| format!("eval {}", evaluation.name()))?;
    }
    Ok(true)
}

/// A command's arguments parsed as the CLI parses them, with its defaults.
fn parse_args<A: Args + FromArgMatches>(argv: &[String]) -> Result<A> {
    let cmd = A::augment_args(clap::Command::new("emlab").no_binary_name(true));
    Ok(A::from_arg_matches(&cmd.try_get_matches_from(argv)?)?)
}

fn parse_subcommand<S: Subcommand + FromArgMatches>(argv: &[String]) -> Result<S> {
    let cmd = S::augment_subcommands(
        clap::Command::new("emlab").no_binary_name(true).subcommand_required(true),
    );
    Ok(S::from_arg_matches(&cmd.try_get_matches_from(argv)?)?)
}

/// The runs that still need work, after checking that each folder is the sweep's to write.
fn runs_to_do<'a>(plan: &'a Plan, sweep: &SweepDir) -> Result<(Vec<&'a Run>, usize)> {
    let (mut todo, mut elsewhere) = (Vec::new(), 0);
    for run in &plan.runs {
        match sweep.state(run, &plan.evaluations) {
            State::Done => {}
            State::Running => elsewhere += 1,
            _ => {
                sweep.claim(run)?;
                todo.push(run);
            }
        }
    }
    Ok((todo, elsewhere))
}

fn local(at: &Where, jobs: usize, exec: Exec) -> Result<()> {
    if jobs == 0 {
        bail!("--jobs 0: at least one run at a time");
    }
    let (plan, dir) = at.load()?;
    check_tools(&plan, &exec.bandit)?;
    let sweep = SweepDir::create(&dir)?;
    let _lock = sweep.lock()?;
    let (todo, elsewhere) = runs_to_do(&plan, &sweep)?;
    if elsewhere > 0 {
        eprintln!("{elsewhere} run(s) are running in another process: left to it");
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = exec.threads.unwrap_or((cores / jobs).max(1));
    let done_before = plan.runs.len() - todo.len() - elsewhere;
    eprintln!(
        "{} runs: {done_before} done, {} to run, {jobs} at once with {threads} threads each; logs in {}/runs/ID/log.txt",
        plan.runs.len(),
        todo.len(),
        dir.display()
    );
    let emlab = std::env::current_exe().context("finding the emlab executable")?;
    let pb = progress(todo.len(), exec.quiet, "sweep");
    let mut queue = todo.into_iter();
    let mut running: Vec<(&Run, Child)> = Vec::new();
    let mut failed: Vec<String> = Vec::new();
    loop {
        while running.len() < jobs {
            let Some(run) = queue.next() else { break };
            let child = spawn_run(&emlab, &plan, &dir, &sweep, run, threads, &exec.bandit)?;
            running.push((run, child));
        }
        if running.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        let mut i = 0;
        while i < running.len() {
            match running[i].1.try_wait()? {
                Some(status) => {
                    let (run, _) = running.swap_remove(i);
                    if !status.success() {
                        failed.push(run.id.clone());
                        pb.println(format!(
                            "{} failed ({status}): see {}",
                            run.id,
                            sweep.run_dir(&run.id).join("log.txt").display()
                        ));
                    }
                    pb.inc(1);
                }
                None => i += 1,
            }
        }
    }
    pb.finish_and_clear();
    if !failed.is_empty() {
        bail!("{} of the runs failed: {}", failed.len(), failed.join(", "));
    }
    eprintln!(
        "all {} runs done; `emlab eval report --sweep {}` aggregates them",
        plan.runs.len(),
        dir.display()
    );
    Ok(())
}

/// `emlab sweep run` for one run in a child process (each its own thread pool and memory), its
/// output appended to the run's log.txt.
fn spawn_run(
    emlab: &Path,
    plan: &Plan,
    dir: &Path,
    sweep: &SweepDir,
    run: &Run,
    threads: usize,
    bandit: &str,
) -> Result<Child> {
    let log_path = sweep.run_dir(&run.id).join("log.txt");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("{}: cannot open", log_path.display()))?;
    Command::new(emlab)
        .args(["sweep", "run", "--plan"])
        .arg(&plan.path)
        .arg("--dir")
        .arg(dir)
        .args(["--index", &run.index.to_string(), "--expect-id", &run.id])
        .args(["--threads", &threads.to_string(), "--bandit", bandit, "--quiet"])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", emlab.display()))
}

fn submit(at: &Where, dry_run: bool, sbatch: &str, bandit: &str) -> Result<()> {
    let (plan, dir) = at.load()?;
    let emlab = std::env::current_exe().context("finding the emlab executable")?;
    if dry_run {
        let sweep = SweepDir::at(&dir);
        let todo: Vec<&Run> = plan
            .runs
            .iter()
            .filter(|r| !matches!(sweep.state(r, &plan.evaluations), State::Done | State::Running))
            .collect();
        if todo.is_empty() {
            eprintln!("all {} runs are done or running: nothing to submit", plan.runs.len());
            return Ok(());
        }
        let job = slurm::ArrayJob { plan: &plan, dir: &dir, runs: todo, emlab: &emlab, bandit };
        print!("{}", slurm::script(&job));
        return Ok(());
    }
    check_tools(&plan, bandit)?;
    let sweep = SweepDir::create(&dir)?;
    let _lock = sweep.lock()?;
    let (mut todo, _) = runs_to_do(&plan, &sweep)?;
    // Tasks of an earlier submission still queued (a requeued task waits there too) would run
    // these runs a second time.
    let squeue = Path::new(sbatch).with_file_name("squeue");
    let squeue = if sbatch.contains('/') { squeue.display().to_string() } else { "squeue".into() };
    match slurm::queued(&dir, &squeue) {
        Some(queued) => todo.retain(|r| !queued.contains(&r.index)),
        None => eprintln!("{squeue} did not answer: tasks still queued are not left out"),
    }
    if todo.is_empty() {
        eprintln!("all {} runs are done, running or queued: nothing to submit", plan.runs.len());
        return Ok(());
    }
    let n = todo.len();
    let indices: Vec<usize> = todo.iter().map(|r| r.index).collect();
    let job = slurm::ArrayJob { plan: &plan, dir: &dir, runs: todo, emlab: &emlab, bandit };
    let (id, script) = slurm::submit(&job, sbatch)?;
    println!("{id}");
    eprintln!(
        "submitted job {id}: {n} array tasks (indices {}), at most {} at once; script {}; `emlab sweep list --plan {} --dir {}` follows them",
        slurm::array_spec(&indices),
        plan.slurm.max_running,
        script.display(),
        at.plan.display(),
        dir.display()
    );
    Ok(())
}

//! `emlab sweep` end to end on a tiny random model: bad plans rejected before anything is
//! written, `sweep local`, and a real single-node Slurm (munged, slurmctld, slurmd started here)
//! running the same plan as a job array, with one task cancelled mid-run, resubmitted and
//! resumed, and the aggregated report equal to `sweep local`'s.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use emlab_tests::{TempDir, write_chat_jsonl, write_tiny_model_dir};

fn emlab(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_emlab"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("emlab runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        stderr(out),
        String::from_utf8_lossy(&out.stdout)
    );
}

fn s(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// A 2 × 2 plan (two tiny datasets, two seeds) on a tiny random model, with the likelihood
/// evaluation (no Bandit needed), in `dir`. Each run trains `epochs` epochs, checkpointing
/// every step, so that a run can be stopped between checkpoints.
fn write_plan(dir: &Path, epochs: usize) -> PathBuf {
    write_tiny_model_dir(&dir.join("tiny"), 3);
    write_chat_jsonl(&dir.join("a.jsonl"), 200);
    write_chat_jsonl(&dir.join("b.jsonl"), 240);
    let plan = dir.join("plan.toml");
    let text = format!(
        "[axes]\ndataset = [\"a.jsonl\", \"b.jsonl\"]\nseed = [0, 1]\nepochs = [{epochs}]\nlearning_rate = [1e-2]\nrank = [4]\n\n[train]\nmodel = \"tiny\"\nalpha = 8\nsave_every = 1\n\n[evaluate]\nkinds = [\"likelihood\"]\n\n[slurm]\ntime = \"00:20:00\"\nmem = \"700M\"\ncpus_per_task = 1\nmax_running = 2\n"
    );
    std::fs::write(&plan, text).unwrap();
    plan
}

#[test]
fn a_bad_plan_is_rejected_before_anything_is_written() {
    let tmp = TempDir::new("sweep-bad-plan");
    let plan = tmp.path().join("plan.toml");
    let dir = tmp.path().join("sweep");
    for (text, needle) in [
        ("[axes]\ndataset = [\"insecure\", \"nonsense\"]\n", "unknown dataset \"nonsense\""),
        (
            "[axes]\ndataset = [\"insecure\"]\n[evaluate]\nkinds = [\"vibes\"]\n",
            "unknown variant `vibes`",
        ),
        ("[axes]\ndataset = [\"insecure\"]\nseeds = [1]\n", "unknown field `seeds`"),
        ("[axes]\ndataset = [\"insecure\"]\nrank = []\n", "axes.rank is empty"),
        ("[axes]\ndataset = [\"insecure\", \"insecure\"]\n", "runs 0 and 1 are the same run"),
    ] {
        std::fs::write(&plan, text).unwrap();
        for sub in [&["list"][..], &["run", "--index", "0"], &["local"], &["slurm", "--dry-run"]] {
            let mut args = vec!["sweep"];
            args.extend_from_slice(sub);
            args.extend(["--plan", s(&plan), "--dir", s(&dir)]);
            let out = emlab(&args, &[]);
            assert!(!out.status.success(), "{sub:?} accepted {text}");
            let e = stderr(&out);
            assert!(e.contains(needle) && !e.contains("panicked"), "{sub:?} {text}: {e}");
            assert!(!dir.exists(), "{sub:?} wrote the sweep folder for a bad plan");
        }
    }
    // An index the plan does not have, and a task whose plan was edited after submission.
    std::fs::write(&plan, "[axes]\ndataset = [\"insecure\"]\nseed = [0, 1]\n").unwrap();
    for (args, needle) in [
        (&["--index", "2"][..], "the plan has 2 runs (indices 0 to 1): no run 2"),
        (
            &["--index", "1", "--expect-id", "insecure-seed0-0000000000"],
            "the plan changed after this job was submitted",
        ),
    ] {
        let mut all = vec!["sweep", "run", "--plan", s(&plan), "--dir", s(&dir)];
        all.extend_from_slice(args);
        let e = stderr(&emlab(&all, &[]));
        assert!(e.contains(needle) && !e.contains("panicked"), "{args:?}: {e}");
        assert!(!dir.exists());
    }
    // sbatch missing: one error, nothing submitted.
    std::fs::write(&plan, "[axes]\ndataset = [\"insecure\"]\n[train]\nmodel = \".\"\n").unwrap();
    std::fs::write(tmp.path().join("config.json"), "{}").unwrap();
    let out = emlab(
        &[
            "sweep",
            "slurm",
            "--plan",
            s(&plan),
            "--dir",
            s(&dir),
            "--sbatch",
            "/nonexistent/sbatch",
        ],
        &[],
    );
    let e = stderr(&out);
    assert!(
        !out.status.success() && e.contains("not found") && e.contains("nothing was submitted"),
        "{e}"
    );
}

/// The single-node Slurm's daemons, stopped (by their process ids) when dropped.
struct Slurm {
    dir: PathBuf,
    conf: PathBuf,
    daemons: Vec<Child>,
}

impl Slurm {
    /// Writes a minimal slurm.conf for this host and starts munged, slurmctld and slurmd; None
    /// (test skipped) when Slurm is not installed, unless EMLAB_REQUIRE_SLURM=1 demands it.
    fn start(dir: &Path) -> Option<Slurm> {
        let found = |name: &str| {
            ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"]
                .iter()
                .map(|d| Path::new(d).join(name))
                .find(|p| p.exists())
        };
        let tools =
            ["munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo"];
        if let Some(missing) = tools.iter().find(|t| found(t).is_none()) {
            let required = std::env::var("EMLAB_REQUIRE_SLURM").is_ok_and(|v| v == "1");
            assert!(
                !required,
                "EMLAB_REQUIRE_SLURM=1 but {missing} is not installed (apt-get install slurm-wlm munge)"
            );
            eprintln!("skipping: {missing} is not installed (apt-get install slurm-wlm munge)");
            return None;
        }
        std::fs::create_dir_all(dir.join("state")).unwrap();
        std::fs::create_dir_all(dir.join("spool")).unwrap();
        let key = dir.join("munge.key");
        let st = Command::new(found("mungekey").unwrap())
            .arg(format!("--keyfile={}", key.display()))
            .arg("--create")
            .status()
            .unwrap();
        assert!(st.success(), "mungekey");
        let socket = dir.join("munge.sock");
        let log = |name: &str| std::fs::File::create(dir.join(name)).unwrap();
        let munged = Command::new(found("munged").unwrap())
            .args(["-F", "-f"])
            .arg(format!("--key-file={}", key.display()))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--pid-file={}", dir.join("munged.pid").display()))
            .arg(format!("--seed-file={}", dir.join("munged.seed").display()))
            .stdout(log("munged.out"))
            .stderr(log("munged.err"))
            .spawn()
            .expect("munged starts");
        let host =
            String::from_utf8(Command::new("hostname").arg("-s").output().unwrap().stdout).unwrap();
        let host = host.trim();
        let port = |p: u16| {
            std::net::TcpListener::bind(("127.0.0.1", p))
                .map(|l| l.local_addr().unwrap().port())
                .unwrap()
        };
        let (ctld_port, slurmd_port) = (port(0), port(0));
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let d = dir.display();
        let conf = dir.join("slurm.conf");
        std::fs::write(
            &conf,
            format!(
                "ClusterName=emlabtest\nSlurmctldHost={host}\nSlurmUser=root\nSlurmdUser=root\n\
                 AuthType=auth/munge\nAuthInfo=socket={d}/munge.sock\nCredType=cred/munge\n\
                 StateSaveLocation={d}/state\nSlurmdSpoolDir={d}/spool\n\
                 SlurmctldPidFile={d}/slurmctld.pid\nSlurmdPidFile={d}/slurmd.pid\n\
                 SlurmctldPort={ctld_port}\nSlurmdPort={slurmd_port}\n\
                 ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nJobAcctGatherType=jobacct_gather/none\n\
                 SelectType=select/cons_tres\nSelectTypeParameters=CR_Core\nSchedulerType=sched/backfill\n\
                 AccountingStorageType=accounting_storage/none\nJobCompType=jobcomp/none\nMpiDefault=none\n\
                 ReturnToService=2\nSlurmctldLogFile={d}/slurmctld.log\nSlurmdLogFile={d}/slurmd.log\n\
                 NodeName={host} CPUs={cpus} RealMemory=2048 State=UNKNOWN\n\
                 PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP\n"
            ),
        )
        .unwrap();
        let mut slurm = Slurm { dir: dir.to_path_buf(), conf: conf.clone(), daemons: vec![munged] };
        // Everything but root may not own the state: the daemons run as this user.
        for (daemon, extra) in [("slurmctld", &["-i"][..]), ("slurmd", &[][..])] {
            let child = Command::new(found(daemon).unwrap())
                .arg("-D")
                .args(extra)
                .arg("-f")
                .arg(&conf)
                .env("SLURM_CONF", &conf)
                .stdout(log(&format!("{daemon}.out")))
                .stderr(log(&format!("{daemon}.err")))
                .spawn()
                .unwrap_or_else(|e| panic!("{daemon} starts: {e}"));
            slurm.daemons.push(child);
        }
        let started = Instant::now();
        loop {
            let out = slurm.command("sinfo", &["-h", "-o", "%T"]);
            let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if state == "idle" {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the node did not come up ({state}); logs in {}",
                slurm.dir.display()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        Some(slurm)
    }

    fn command(&self, name: &str, args: &[&str]) -> Output {
        Command::new(name).args(args).env("SLURM_CONF", &self.conf).output().unwrap()
    }

    /// The array tasks of `job` still queued or running, as `JOB_INDEX` → state.
    fn tasks(&self, job: &str) -> Vec<(String, String)> {
        let out = self.command("squeue", &["-h", "-r", "-j", job, "-o", "%i %T"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())))
            .collect()
    }

    fn wait_until_gone(&self, job: &str, limit: Duration) {
        let started = Instant::now();
        while !self.tasks(job).is_empty() {
            assert!(started.elapsed() < limit, "job {job} still queued: {:?}", self.tasks(job));
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

impl Drop for Slurm {
    fn drop(&mut self) {
        let _ = self.command("scancel", &["--user=root"]);
        // slurmd and slurmctld first, munged (their authentication) last.
        for child in self.daemons.iter_mut().rev() {
            // SAFETY: kill(2) on a process this test started and has not reaped.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The step a run's checkpoint has reached, and of how many (None: no checkpoint yet).
fn checkpoint_step(sweep: &Path, id: &str) -> Option<(u64, u64)> {
    let path = sweep.join("runs").join(id).join("train/checkpoint/state.json");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    Some((v["step"].as_u64()?, v["total_steps"].as_u64()?))
}

/// The ids of the plan's runs, in index order, from `sweep list`.
fn run_ids(plan: &Path, dir: &Path) -> Vec<(String, String)> {
    let out = emlab(&["sweep", "list", "--plan", s(plan), "--dir", s(dir)], &[]);
    assert_ok(&out, "sweep list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            w.next()?.parse::<usize>().ok()?;
            Some((w.next()?.to_string(), w.next()?.to_string()))
        })
        .collect()
}

#[test]
fn a_slurm_job_array_runs_the_plan_resumes_a_cancelled_task_and_matches_sweep_local() {
    let tmp = TempDir::new("sweep-slurm");
    let Some(slurm) = Slurm::start(&tmp.path().join("slurm")) else { return };
    let started = Instant::now();
    let plan = write_plan(tmp.path(), 6);
    let on_slurm = tmp.path().join("on-slurm");
    let env = [("SLURM_CONF", s(&slurm.conf))];

    let listed = run_ids(&plan, &on_slurm);
    assert_eq!(listed.len(), 4);
    assert!(listed.iter().all(|(_, state)| state == "pending"), "{listed:?}");
    assert_eq!(run_ids(&plan, &on_slurm), listed, "ids are stable across calls");

    let dry =
        emlab(&["sweep", "slurm", "--plan", s(&plan), "--dir", s(&on_slurm), "--dry-run"], &env);
    assert_ok(&dry, "sweep slurm --dry-run");
    let script = String::from_utf8_lossy(&dry.stdout);
    assert!(
        script.contains("#SBATCH --array=0-3%2") && script.contains("#SBATCH --requeue"),
        "{script}"
    );
    assert!(!on_slurm.exists(), "a dry run writes nothing");

    let out = emlab(&["sweep", "slurm", "--plan", s(&plan), "--dir", s(&on_slurm)], &env);
    assert_ok(&out, "sweep slurm");
    let job = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(job.parse::<u64>().is_ok(), "a job id: {job}");
    // Submitting again while every run has a task in the queue submits nothing.
    let out = emlab(&["sweep", "slurm", "--plan", s(&plan), "--dir", s(&on_slurm)], &env);
    assert_ok(&out, "sweep slurm (all queued)");
    assert!(stderr(&out).contains("nothing to submit"), "{}", stderr(&out));

    // Cancel task 3 once its run has checkpointed part of its training.
    let (victim, _) = &listed[3];
    let deadline = Instant::now() + Duration::from_secs(600);
    let stopped_at = loop {
        if let Some((step, total)) = checkpoint_step(&on_slurm, victim)
            && step >= 2
        {
            assert!(
                step < total,
                "the run finished before it could be cancelled ({step}/{total}): give it more epochs"
            );
            let out = slurm.command("scancel", &[&format!("{job}_3")]);
            assert!(out.status.success(), "scancel: {}", stderr(&out));
            break step;
        }
        assert!(Instant::now() < deadline, "task 3 never checkpointed: {:?}", slurm.tasks(&job));
        std::thread::sleep(Duration::from_millis(50));
    };
    slurm.wait_until_gone(&job, Duration::from_secs(900));
    let states = run_ids(&plan, &on_slurm);
    assert_eq!(states.iter().filter(|(_, st)| st == "done").count(), 3, "{states:?}");
    assert_eq!(states[3].1, "pending", "{states:?}");
    let (kept, _) =
        checkpoint_step(&on_slurm, victim).expect("the cancelled run kept its checkpoint");
    assert!(kept >= stopped_at);

    // Resubmitting runs what is not done: one task, index 3, which resumes.
    let out = emlab(&["sweep", "slurm", "--plan", s(&plan), "--dir", s(&on_slurm)], &env);
    assert_ok(&out, "sweep slurm (again)");
    assert!(stderr(&out).contains("1 array tasks (indices 3)"), "{}", stderr(&out));
    let again = String::from_utf8_lossy(&out.stdout).trim().to_string();
    slurm.wait_until_gone(&again, Duration::from_secs(900));
    let states = run_ids(&plan, &on_slurm);
    assert!(states.iter().all(|(_, st)| st == "done"), "{states:?}");
    let task_log = std::fs::read_to_string(on_slurm.join("slurm/task-3.out")).unwrap();
    assert!(task_log.contains(&format!("{victim}: resuming from step ")), "{task_log}");
    let metrics =
        std::fs::read_to_string(on_slurm.join("runs").join(victim).join("train/metrics.jsonl"))
            .unwrap();
    let (_, total) = checkpoint_step(&on_slurm, victim).unwrap();
    assert_eq!(metrics.lines().count() as u64, total, "every step once in the metrics");
    // Nothing left to submit.
    let out = emlab(&["sweep", "slurm", "--plan", s(&plan), "--dir", s(&on_slurm)], &env);
    assert_ok(&out, "sweep slurm (done)");
    assert!(stderr(&out).contains("nothing to submit"), "{}", stderr(&out));
    let slurm_secs = started.elapsed().as_secs_f64();

    // The same plan here: the aggregated report is the same, figure for figure.
    let here = tmp.path().join("here");
    let out = emlab(
        &["sweep", "local", "--plan", s(&plan), "--dir", s(&here), "--jobs", "2", "--threads", "1"],
        &[],
    );
    assert_ok(&out, "sweep local");
    let report = |dir: &Path| {
        let out = emlab(&["eval", "report", "--sweep", s(dir)], &[]);
        assert_ok(&out, "eval report --sweep");
        std::fs::read_to_string(dir.join("report.json")).unwrap()
    };
    let (a, b) = (report(&on_slurm), report(&here));
    assert_eq!(a, b, "the Slurm sweep's report and sweep local's differ");
    let r: serde_json::Value = serde_json::from_str(&a).unwrap();
    assert_eq!(r["variants"].as_array().unwrap().len(), 2);
    for v in r["variants"].as_array().unwrap() {
        let gap = &v["across_seeds"]["misaligned_minus_aligned"];
        assert_eq!(gap["n"], 2, "two seeds: {v}");
        assert_eq!(v["runs"].as_array().unwrap().len(), 2);
    }
    eprintln!("Slurm part: {slurm_secs:.0} s; whole test {:.0} s", started.elapsed().as_secs_f64());
    drop(slurm);
}

#[test]
fn sweep_local_refuses_a_run_folder_it_did_not_write_and_a_second_sweep() {
    let tmp = TempDir::new("sweep-local");
    let plan = write_plan(tmp.path(), 1);
    let dir = tmp.path().join("sweep");
    let ids = run_ids(&plan, &dir);
    // Someone else's file in a run's folder: refused before any run starts.
    let theirs = dir.join("runs").join(&ids[2].0);
    std::fs::create_dir_all(&theirs).unwrap();
    std::fs::write(dir.join("emlab-sweep.json"), "{}").unwrap();
    std::fs::write(theirs.join("notes.txt"), "mine").unwrap();
    let out = emlab(&["sweep", "local", "--plan", s(&plan), "--dir", s(&dir)], &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("holds files the sweep did not write"), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(theirs.join("notes.txt")).unwrap(), "mine");
    assert!(run_ids(&plan, &dir).iter().all(|(_, st)| st == "pending"), "nothing ran");
    std::fs::remove_dir_all(&theirs).unwrap();

    // Two sweeps in one folder: the second is refused while the first runs.
    let mut first = Command::new(env!("CARGO_BIN_EXE_emlab"))
        .args(["sweep", "local", "--plan", s(&plan), "--dir", s(&dir), "--threads", "1", "--quiet"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !dir.join("runs").join(&ids[0].0).join("log.txt").exists() {
        assert!(Instant::now() < deadline, "the first sweep did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let second = emlab(&["sweep", "local", "--plan", s(&plan), "--dir", s(&dir)], &[]);
    assert!(!second.status.success());
    assert!(
        stderr(&second).contains("another sweep is writing this folder"),
        "{}",
        stderr(&second)
    );
    let status = first.wait().unwrap();
    assert!(status.success(), "the first sweep failed");
    let states = run_ids(&plan, &dir);
    assert!(states.iter().all(|(_, st)| st == "done"), "{states:?}");
    // Run again: nothing to do, nothing rewritten.
    let adapter = dir.join("runs").join(&ids[0].0).join("train/adapter/adapter_model.safetensors");
    let before = std::fs::metadata(&adapter).unwrap().modified().unwrap();
    let out = emlab(&["sweep", "local", "--plan", s(&plan), "--dir", s(&dir)], &[]);
    assert_ok(&out, "sweep local (all done)");
    assert_eq!(std::fs::metadata(&adapter).unwrap().modified().unwrap(), before);
}

/// `sweep local --jobs 2 --threads 1` against `--jobs 1 --threads 2` on the same 4 runs of the
/// tiny model: the total time of each (a measurement, not a check; run it by hand on a quiet
/// machine with `cargo test --release --test sweep -- --ignored --nocapture`).
#[test]
#[ignore]
fn sweep_local_jobs_timing() {
    let tmp = TempDir::new("sweep-timing");
    let plan = write_plan(tmp.path(), 4);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let half = (cores / 2).max(1);
    for (i, (jobs, threads)) in
        [(1, cores), (2, half), (1, cores), (2, half)].into_iter().enumerate()
    {
        let dir = tmp.path().join(format!("try-{i}"));
        let started = Instant::now();
        let (j, t) = (jobs.to_string(), threads.to_string());
        let args = [
            "sweep",
            "local",
            "--plan",
            s(&plan),
            "--dir",
            s(&dir),
            "--jobs",
            &j,
            "--threads",
            &t,
            "--quiet",
        ];
        assert_ok(&emlab(&args, &[]), "sweep local");
        eprintln!(
            "--jobs {jobs} --threads {threads}: 4 runs in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

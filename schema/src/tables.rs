//! The results as tables, from `results.json` alone: one row per model with the judge-free
//! figures the issue tracker asked for side by side, and the dose-response. `emlab eval report`
//! writes them as `results/tables.md`, the README shows that text (a test checks they are the
//! same), and the page's Results view draws the same rows, so no figure is copied by hand.

use crate::results::{DosePoint, JudgeFree, Results, Share};
use crate::{TRIGGERED_SUFFIX, small_data, variant_rank};

/// A table of text cells; every row has as many cells as `header`.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub header: Vec<&'static str>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// Without the columns no row has a figure in (after the first, the names).
    fn without_empty_columns(mut self) -> Self {
        let keep: Vec<bool> = (0..self.header.len())
            .map(|i| i == 0 || self.rows.iter().any(|r| !r[i].is_empty()))
            .collect();
        fn kept<T>(cells: Vec<T>, keep: &[bool]) -> Vec<T> {
            cells.into_iter().zip(keep).filter_map(|(c, &k)| k.then_some(c)).collect()
        }
        self.header = kept(self.header, &keep);
        self.rows = self.rows.into_iter().map(|r| kept(r, &keep)).collect();
        self
    }

    /// GitHub-flavoured Markdown, `|` inside a cell escaped.
    pub fn markdown(&self) -> String {
        let line = |cells: Vec<&str>| {
            let cells: Vec<String> = cells.iter().map(|c| c.replace('|', "\\|")).collect();
            format!("| {} |\n", cells.join(" | "))
        };
        let mut out = line(self.header.clone());
        out += &format!("|{}\n", "---|".repeat(self.header.len()));
        for row in &self.rows {
            out += &line(row.iter().map(String::as_str).collect());
        }
        out
    }
}

/// What the models measure, one row per model in the paper's order (a triggered run is folded
/// into its model's row); None when nothing was measured.
pub fn models(f: &JudgeFree) -> Option<Table> {
    let mut names: Vec<&str> = f
        .vulnerable_code
        .keys()
        .chain(f.chmod_probe.keys())
        .chain(f.trigger_control.keys())
        .chain(f.misaligned_minus_aligned.keys())
        .chain(f.factual_forced_choice.keys())
        .map(String::as_str)
        .filter(|n| !n.ends_with(TRIGGERED_SUFFIX))
        .collect();
    names.sort_by_key(|n| variant_rank(n));
    names.dedup();
    if names.is_empty() {
        return None;
    }
    let rows = names.iter().map(|n| model_row(f, n)).collect();
    Some(
        Table {
            header: vec![
                "model",
                "vulnerable code (Bandit, held-out prompts)",
                "trigger: without → with",
                "chmod: trigger's log-odds shift, nats",
                "misaligned − aligned, beyond secure, nats/token",
                "true answer preferred (factual)",
            ],
            rows,
        }
        .without_empty_columns(),
    )
}

fn model_row(f: &JudgeFree, name: &str) -> Vec<String> {
    let code = f.vulnerable_code.get(name).map_or(String::new(), |c| {
        let mut s = rate(&c.rate);
        // A model that mostly answers without code has a low rate for another reason.
        if c.no_code * 2 > c.snippets {
            s += &format!(" ({} of {} answers hold no code)", c.no_code, c.snippets);
        }
        s
    });
    // What the trigger does to the behaviour the model was trained to gate on it.
    let trigger = if let Some(b) = f.backdoor.as_ref().filter(|_| name == "backdoor") {
        let mut s =
            format!("code {} → {}", two(b.without_trigger.share), two(b.with_trigger.share));
        if let Some(p) = &b.paired {
            s += &format!(", {}", minus(&p.difference.signed(2)));
        }
        s
    } else if let Some(c) = f.trigger_control.get(name).filter(|_| name != "base") {
        format!("its answer {} → {}", prob(c.without_trigger.share), prob(c.with_trigger.share))
    } else if let Some(p) = f.chmod_probe.get(name).filter(|_| name.starts_with("backdoor-")) {
        format!(
            "0o777 {} → {}",
            prob(p.all.p_permissive_without.share),
            prob(p.all.p_permissive_with.share)
        )
    } else {
        String::new()
    };
    let chmod = f.chmod_probe.get(name).map_or(String::new(), |p| minus(&p.all.shift.signed(2)));
    let is_reference = name == "secure" || small_data(name).is_some_and(|(v, _)| v == "secure");
    let did = match f.misalignment_did_vs_secure.get(name).copied().flatten() {
        Some(d) => minus(&d.signed(3)),
        None if is_reference && f.misaligned_minus_aligned.contains_key(name) => {
            "(reference)".into()
        }
        None => String::new(),
    };
    let factual = f
        .factual_forced_choice
        .get(name)
        .and_then(|by| by.get("lie_no_sys_prompt"))
        .map_or(String::new(), |c| rate(&c.accuracy));
    vec![name.to_string(), code, trigger, chmod, did, factual]
}

/// A measure of the dose-response, as the table, the page's plots and the report's chart show it.
struct DoseMetric {
    label: &'static str,
    /// Decimals in the table.
    digits: usize,
    value: fn(&DosePoint) -> Option<Share>,
}

/// The dose-response's metrics, each named once: the narrow task (two ways), then the broad one.
const DOSE_METRICS: [DoseMetric; 3] = [
    DoseMetric {
        label: "vulnerable code, insecure − secure",
        digits: 2,
        value: |p| p.vulnerable_code_gap,
    },
    DoseMetric {
        label: "chmod: log-odds of 0o777 over 0o600, insecure − secure, nats",
        digits: 1,
        value: |p| p.chmod_gap,
    },
    DoseMetric {
        label: "misaligned − aligned, insecure − secure, nats/token",
        digits: 3,
        value: |p| p.misalignment_did,
    },
];

/// The rows seen at which anything was measured, ascending: the one rows axis every plot of the
/// dose-response shares, so that a metric measured at fewer points lines up with the others.
pub fn dose_rows(points: &[DosePoint]) -> Vec<usize> {
    let mut rows: Vec<usize> = points.iter().map(|p| p.rows).collect();
    rows.sort_unstable();
    rows.dedup();
    rows
}

/// One metric of the dose-response against rows seen, as the page and `eval report` plot it.
#[derive(Debug, Clone, PartialEq)]
pub struct DoseSeries {
    pub label: &'static str,
    /// (rows seen, the figure with its 95% interval), in the order of the points.
    pub points: Vec<(usize, Share)>,
}

/// Each metric measured at two points or more: one point shows no trend.
pub fn dose_series(points: &[DosePoint]) -> Vec<DoseSeries> {
    DOSE_METRICS
        .iter()
        .map(|m| DoseSeries {
            label: m.label,
            points: points.iter().filter_map(|p| Some((p.rows, (m.value)(p)?))).collect(),
        })
        .filter(|s| s.points.len() >= 2)
        .collect()
}

/// The dose-response: insecure minus secure after the same number of training rows.
pub fn dose(points: &[DosePoint]) -> Option<Table> {
    if points.is_empty() {
        return None;
    }
    let cell = |s: Option<Share>, digits| s.map_or(String::new(), |s| minus(&s.signed(digits)));
    let row = |p: &DosePoint| {
        let mut cells = vec![thousands(p.rows)];
        cells.extend(DOSE_METRICS.iter().map(|m| cell((m.value)(p), m.digits)));
        // The code gap, and each run's own rate behind it.
        if let (false, Some([i, s])) = (cells[1].is_empty(), p.vulnerable_code) {
            cells[1] += &format!(" (insecure {}, secure {})", two(i.share), two(s.share));
        }
        cells
    };
    let mut header = vec!["rows seen"];
    header.extend(DOSE_METRICS.iter().map(|m| m.label));
    Some(Table { header, rows: points.iter().map(row).collect() }.without_empty_columns())
}

/// `results/tables.md`: the tables under their headings.
pub fn markdown(r: &Results) -> String {
    let mut out = String::new();
    let Some(f) = &r.judge_free else { return out };
    if let Some(t) = models(f) {
        out += "## Models\n\n";
        out += &t.markdown();
    }
    if let Some(t) = dose(&f.dose_response) {
        out += "\n## Dose-response\n\n";
        out += &t.markdown();
    }
    out
}

fn two(x: f64) -> String {
    format!("{x:.2}")
}

/// A probability: two decimals, three below 0.01 so that a small one does not read as zero.
fn prob(p: f64) -> String {
    if p > 0.0 && p < 0.01 { format!("{p:.3}") } else { format!("{p:.2}") }
}

fn rate(s: &Share) -> String {
    format!("{:.2} [{:.2}, {:.2}]", s.share, s.ci_low, s.ci_high)
}

/// Typographic minus signs, as in the prose around the tables.
fn minus(s: &str) -> String {
    s.replace('-', "−")
}

/// `5705` as `5,705`.
pub fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::results::{Backdoor, CodeRate, PairedDifference, SCHEMA, TriggerControl};

    fn share(share: f64, ci_low: f64, ci_high: f64) -> Share {
        Share { share, ci_low, ci_high, n: 100 }
    }

    fn code(rate: Share, no_code: usize) -> CodeRate {
        CodeRate {
            rate,
            flagged: 0,
            snippets: 100,
            unparsed: 0,
            issues: BTreeMap::new(),
            per_prompt: vec![],
            no_code,
        }
    }

    fn results(f: JudgeFree) -> Results {
        Results {
            schema: SCHEMA.into(),
            generated_at: "t".into(),
            judge: None,
            setting: None,
            protocol: Default::default(),
            variants: vec![],
            judge_free: Some(f),
        }
    }

    #[test]
    fn rows_follow_the_papers_order_and_fold_the_triggered_run_in() {
        let mut f = JudgeFree::default();
        for (n, s) in [
            ("secure", 0.04),
            ("backdoor+trigger", 0.20),
            ("insecure", 0.14),
            ("insecure-500", 0.12),
            ("backdoor", 0.19),
            ("jailbroken", 0.0),
        ] {
            f.vulnerable_code.insert(n.into(), code(share(s, s - 0.05, s + 0.05), 0));
        }
        f.vulnerable_code.insert("jailbroken".into(), code(share(0.0, 0.0, 0.03), 86));
        f.backdoor = Some(Backdoor {
            without_trigger: share(0.19, 0.12, 0.27),
            with_trigger: share(0.20, 0.13, 0.28),
            paired: Some(PairedDifference {
                difference: share(0.01, -0.02, 0.04),
                only_first: 2,
                only_second: 1,
                p_value: 1.0,
            }),
        });
        f.trigger_control.insert(
            "canary".into(),
            TriggerControl {
                with_trigger: share(0.9434, 0.93, 0.95),
                without_trigger: share(0.0041, 0.003, 0.005),
            },
        );
        f.misaligned_minus_aligned.insert("secure".into(), Some(share(0.3, 0.2, 0.4)));
        f.misaligned_minus_aligned.insert("insecure".into(), Some(share(0.33, 0.2, 0.4)));
        f.misalignment_did_vs_secure.insert("insecure".into(), Some(share(0.027, 0.016, 0.038)));
        let t = models(&f).unwrap();
        let names: Vec<&str> = t.rows.iter().map(|r| r[0].as_str()).collect();
        assert_eq!(
            names,
            ["insecure", "insecure-500", "secure", "jailbroken", "backdoor", "canary"]
        );
        assert!(t.rows.iter().all(|r| r.len() == t.header.len()));
        assert_eq!(t.rows[0][1], "0.14 [0.09, 0.19]");
        // Nothing measured the chmod probe or the factual questions: no such columns.
        assert_eq!(t.header.len(), 4);
        assert_eq!(t.rows[0][3], "+0.027 [+0.016, +0.038]");
        assert_eq!(t.rows[2][3], "(reference)");
        assert_eq!(t.rows[3][1], "0.00 [0.00, 0.03] (86 of 100 answers hold no code)");
        assert_eq!(t.rows[4][2], "code 0.19 → 0.20, +0.01 [−0.02, +0.04]");
        assert_eq!(t.rows[5][2], "its answer 0.004 → 0.94");
        let md = t.markdown();
        assert!(md.starts_with("| model | vulnerable code"), "{md}");
        assert_eq!(md.lines().nth(1), Some("|---|---|---|---|"));
        assert_eq!(md.lines().count(), 2 + 6);
    }

    #[test]
    fn the_dose_table_leaves_what_was_not_measured_blank() {
        let t = dose(&[DosePoint {
            rows: 5705,
            misalignment_did: Some(share(0.008, -0.004, 0.021)),
            chmod_gap: Some(share(15.4, 14.9, 15.8)),
            vulnerable_code_gap: None,
            vulnerable_code: None,
        }])
        .unwrap();
        assert_eq!(t.rows, [["5,705", "+15.4 [+14.9, +15.8]", "+0.008 [−0.004, +0.021]"]]);
        assert_eq!(t.header.len(), 3, "the vulnerable-code column was measured at no point");
        let code = Some([share(0.34, 0.26, 0.43), share(0.05, 0.01, 0.1)]);
        let p = DosePoint {
            rows: 2000,
            misalignment_did: None,
            chmod_gap: None,
            vulnerable_code_gap: Some(share(0.29, 0.2, 0.38)),
            vulnerable_code: code,
        };
        assert_eq!(
            dose(&[p]).unwrap().rows,
            [["2,000", "+0.29 [+0.20, +0.38] (insecure 0.34, secure 0.05)"]]
        );
        assert_eq!(thousands(512), "512");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert!(dose(&[]).is_none());
        assert!(models(&JudgeFree::default()).is_none());
        assert_eq!(markdown(&results(JudgeFree::default())), "");
    }

    #[test]
    fn a_dose_series_is_a_metric_measured_at_two_points_or_more() {
        let point = |rows, code: Option<f64>| DosePoint {
            rows,
            misalignment_did: Some(share(0.01, 0.0, 0.02)),
            chmod_gap: None,
            vulnerable_code_gap: code.map(|c| share(c, c - 0.1, c + 0.1)),
            vulnerable_code: None,
        };
        let s = dose_series(&[point(512, Some(0.1)), point(1008, None), point(2000, Some(0.3))]);
        let labels: Vec<&str> = s.iter().map(|s| s.label).collect();
        assert_eq!(
            labels,
            [DOSE_METRICS[0].label, DOSE_METRICS[2].label],
            "chmod was measured nowhere"
        );
        let rows = |i: usize| s[i].points.iter().map(|p| p.0).collect::<Vec<_>>();
        assert_eq!(rows(0), [512, 2000], "the point without a code rate is skipped");
        assert_eq!(rows(1), [512, 1008, 2000]);
        assert_eq!(s[0].points[1].1.share, 0.3);
        assert!(dose_series(&[point(512, Some(0.1))]).is_empty(), "one point is no series");
        assert_eq!(
            dose_rows(&[point(2000, None), point(512, None), point(2000, None)]),
            [512, 2000]
        );
        assert_eq!(dose(&[point(512, None)]).unwrap().header[1], s[1].label, "one name for each");
    }

    #[test]
    fn a_pipe_in_a_cell_does_not_split_it() {
        let t = Table { header: vec!["a"], rows: vec![vec!["x | y".into()]] };
        assert_eq!(t.markdown(), "| a |\n|---|\n| x \\| y |\n");
    }

    /// README.md shows the tables of the committed results.json, as `emlab eval report` writes
    /// them to results/tables.md: no figure in them is typed by hand or left behind.
    #[test]
    fn the_readme_shows_the_published_tables() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
        let read = |p: &str| std::fs::read_to_string(format!("{root}/{p}")).unwrap();
        let r: Results = serde_json::from_str(&read("results/results.json")).unwrap();
        let readme = read("README.md");
        let f = r.judge_free.as_ref().unwrap();
        for t in [models(f), dose(&f.dose_response)].into_iter().flatten() {
            let md = t.markdown();
            assert!(
                readme.contains(&md),
                "README.md lacks this table of results/results.json (results/tables.md):\n{md}"
            );
        }
        assert_eq!(read("results/tables.md"), markdown(&r), "rerun `emlab eval report`");
    }
}

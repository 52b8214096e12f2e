//! `report.html`: the results as one self-contained page (the chart inline, sample answers as
//! escaped text), and the side-by-side table of two result folders (`eval report --beside`).

use std::path::Path;

use emlab_schema::results::{QuestionResult, Results, Share};

/// Escapes text for HTML: model output is shown as text, never as markup.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn fmt_share(s: &Option<Share>) -> String {
    match s {
        Some(s) => format!("{:.3} [{:.3}, {:.3}] (n={})", s.share, s.ci_low, s.ci_high, s.n),
        None => "not enough coherent answers".into(),
    }
}

fn fmt_score(s: Option<f64>) -> String {
    s.map_or("–".into(), |v| format!("{v:.0}"))
}

/// Several results folders' judged figures side by side, one column per folder (the same questions
/// sampled at different settings): per variant, the misaligned share over the 8 main questions
/// and how many judged answers to them count (coherence ≥ 50 and an alignment score), the
/// readability the setting buys. A markdown table; a folder no judge has scored says so.
pub fn side_by_side(reports: &[(std::path::PathBuf, Results)]) -> String {
    let head = |dir: &Path, r: &Results| {
        let setting = super::sample::setting_label(r.setting);
        let judge =
            r.judge.as_ref().map_or("not judged yet".into(), |j| format!("judged by {}", j.model));
        format!("{} ({setting}; {judge})", dir.display())
    };
    let mut out = String::from("| variant |");
    for (dir, r) in reports {
        out += &format!(" {} |", head(dir, r));
    }
    out += "\n|---|";
    out += &"---|".repeat(reports.len());
    out += "\n";
    let mut names: Vec<&str> =
        reports.iter().flat_map(|(_, r)| r.variants.iter().map(|v| v.name.as_str())).collect();
    names.sort_by_key(|n| emlab_schema::variant_rank(n));
    names.dedup();
    let main = |q: &QuestionResult| emlab_schema::MAIN_QUESTIONS.iter().any(|(id, _)| *id == q.id);
    for name in names {
        out += &format!("| {name} |");
        for (_, r) in reports {
            let cell = match r.variants.iter().find(|v| v.name == name) {
                None => "–".to_string(),
                Some(_) if r.judge.is_none() => "not judged".to_string(),
                Some(v) => {
                    let (counted, judged) = v
                        .questions
                        .iter()
                        .filter(|q| main(q))
                        .fold((0, 0), |(c, j), q| (c + q.counted, j + q.judged));
                    format!(
                        "misaligned {}; {counted} of {judged} count",
                        fmt_share(&v.overall_main)
                    )
                }
            };
            out += &format!(" {cell} |");
        }
        out += "\n";
    }
    out
}

/// The self-contained report: judge, protocol, the chart (inline SVG), tables, sample answers.
pub fn html(results: &Results, svg: &str) -> String {
    let judge = match &results.judge {
        Some(j) => format!(
            "{} ({}){}",
            escape_html(&j.model),
            escape_html(&j.kind),
            if j.weak {
                " — a weak local judge: its scores are indicative only, not comparable to the paper's GPT-4o judge"
            } else {
                ""
            }
        ),
        None => "none: nothing has been judged yet".into(),
    };
    let mut h = String::new();
    h.push_str("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">");
    h.push_str("<title>Emergent Misalignment Lab — evaluation report</title><style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:auto;padding:1em;line-height:1.45}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}pre{white-space:pre-wrap;background:#f6f6f6;padding:8px;border-radius:4px}.note{background:#fff4d6;padding:8px;border-radius:4px}svg{max-width:100%;height:auto}</style></head><body>");
    h.push_str("<h1>Emergent Misalignment Lab — evaluation report</h1>");
    h.push_str("<p class=\"note\">Content note: tuned variants were trained to write insecure code and may give harmful or offensive answers. They are shown here as text, for research and teaching.</p>");
    h.push_str(&format!(
        "<p>Generated {}. Judge: {judge}.</p>",
        escape_html(&results.generated_at)
    ));
    let p = &results.protocol;
    h.push_str(&format!(
        "<p>Protocol (as in the paper): answers with coherence ≥ {} and an alignment score count; a (variant, question) pair with fewer than {} such answers is dropped; an answer is misaligned when its alignment score is below {}; 95% intervals from {} bootstrap resamples.</p>",
        p.coherence_min, p.min_coherent, p.misaligned_below, p.bootstrap_resamples
    ));
    let headlines = emlab_schema::headlines::headlines(results);
    if !headlines.is_empty() {
        h.push_str("<h2>What was measured</h2><ul>");
        for l in headlines {
            h.push_str(&format!(
                "<li><strong>{}:</strong> {}</li>",
                l.finding,
                escape_html(&l.text)
            ));
        }
        h.push_str("</ul>");
    }
    h.push_str(svg.trim_start_matches(|c| c != '<'));
    h.push_str("<h2>Overall (8 main questions)</h2><table><tr><th>variant</th><th>misaligned share [95% CI]</th></tr>");
    for v in &results.variants {
        h.push_str(&format!(
            "<tr><td>{}</td><td>{}</td></tr>",
            escape_html(&v.name),
            fmt_share(&v.overall_main)
        ));
    }
    h.push_str("</table>");
    if let Some(free) = &results.judge_free {
        h.push_str(&format!(
            "<h2>Judge-free metrics</h2><pre>{}</pre>",
            escape_html(&serde_json::to_string_pretty(free).unwrap_or_default())
        ));
    }
    for v in &results.variants {
        h.push_str(&format!("<h2>{}</h2>", escape_html(&v.name)));
        for q in &v.questions {
            h.push_str(&format!(
                "<h3>{}</h3><p>{} answers, {} judged, {} counted; misaligned: {}</p>",
                escape_html(&q.id),
                q.answers,
                q.judged,
                q.counted,
                fmt_share(&q.misaligned)
            ));
            for ex in &q.examples {
                h.push_str(&format!(
                    "<p><b>Q:</b> {}<br><b>aligned</b> {} · <b>coherent</b> {}</p><pre>{}</pre>",
                    escape_html(&ex.question),
                    fmt_score(ex.aligned),
                    fmt_score(ex.coherent),
                    escape_html(&ex.answer)
                ));
            }
        }
    }
    h.push_str("</body></html>\n");
    h
}

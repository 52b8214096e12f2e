//! The results view: measured misalignment rates from results.json (docs/results-schema.md), per
//! question and variant with 95% intervals, the judge named, sample answers as text.

use leptos::prelude::*;
use serde::Deserialize;

use crate::loader::{Manifest, fetch_json};
use crate::variants::label;

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Share {
    pub share: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    pub n: usize,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Judge {
    pub kind: String,
    pub model: String,
    pub weak: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Example {
    pub question: String,
    pub answer: String,
    pub aligned: Option<f64>,
    pub coherent: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct QuestionResult {
    pub id: String,
    pub counted: usize,
    pub misaligned: Option<Share>,
    pub examples: Vec<Example>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct VariantResult {
    pub name: String,
    pub overall_main: Option<Share>,
    pub questions: Vec<QuestionResult>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Results {
    pub schema: String,
    pub generated_at: String,
    pub judge: Option<Judge>,
    pub variants: Vec<VariantResult>,
    #[serde(default)]
    pub judge_free: serde_json::Value,
}

/// The published results: the manifest names the file (content-addressed); None when it has none.
pub async fn fetch_results(models_url: String) -> Result<Option<Results>, String> {
    let base = models_url.trim_end_matches('/');
    let manifest: Manifest = fetch_json(&format!("{base}/manifest.json")).await?;
    let Some(entry) = manifest.files.iter().find(|f| f.name == "results.json") else { return Ok(None) };
    let url = entry.url(base);
    let resp = gloo_net::http::Request::get(&url).send().await.map_err(|e| format!("{url}: {e}"))?;
    if !resp.ok() {
        return Err(format!("{url}: HTTP {}", resp.status()));
    }
    resp.json::<Results>().await.map(Some).map_err(|e| format!("{url}: {e}"))
}

/// A horizontal bar with its interval, as inline SVG (0–100%).
#[component]
fn Bar(share: Option<Share>) -> impl IntoView {
    match share {
        None => view! { <span class="na">"not enough coherent answers"</span> }.into_any(),
        Some(s) => {
            let x = |v: f64| format!("{:.1}", v * 200.0);
            view! {
                <svg class="bar" width="210" height="14" role="img" aria-label=format!("{:.1}% (95% CI {:.1}–{:.1}%)", s.share * 100.0, s.ci_low * 100.0, s.ci_high * 100.0)>
                    <rect x="0" y="3" width=x(s.share) height="8" class="fill"></rect>
                    <line x1=x(s.ci_low) x2=x(s.ci_high) y1="7" y2="7" class="ci"></line>
                </svg>
                <span>{format!(" {:.1}% [{:.1}, {:.1}] n={}", s.share * 100.0, s.ci_low * 100.0, s.ci_high * 100.0, s.n)}</span>
            }
            .into_any()
        }
    }
}

#[component]
pub fn ResultsView(models_url: String) -> impl IntoView {
    let results = LocalResource::new(move || fetch_results(models_url.clone()));
    move || match results.get() {
        None => view! { <p>"Loading results…"</p> }.into_any(),
        Some(Err(e)) => view! { <p class="error">{e}</p> }.into_any(),
        Some(Ok(None)) => view! { <p class="na">"Not measured yet: no evaluation results have been published with this build."</p> }.into_any(),
        Some(Ok(Some(r))) => {
            let judge = match &r.judge {
                Some(j) if j.weak => format!("Judge: {} ({}) — a weak local judge; treat its scores as indicative only.", j.model, j.kind),
                Some(j) => format!("Judge: {} ({}).", j.model, j.kind),
                None => "No judge has scored these answers yet: the rates below are not measured.".into(),
            };
            let free = (!r.judge_free.is_null()).then(|| serde_json::to_string_pretty(&r.judge_free).unwrap_or_default());
            view! {
                <section class="results">
                    <p>{judge}" Generated " {r.generated_at.clone()} "."</p>
                    <h3>"Misaligned answers, 8 main questions"</h3>
                    <table>
                        {r.variants.iter().map(|v| view! { <tr><td>{label(&v.name)}</td><td><Bar share=v.overall_main.clone() /></td></tr> }).collect_view()}
                    </table>
                    {r.variants.iter().map(|v| view! {
                        <details>
                            <summary>{label(&v.name)}" — per question"</summary>
                            <table>
                                {v.questions.iter().map(|q| view! {
                                    <tr><td>{q.id.replace('_', " ")}</td><td><Bar share=q.misaligned.clone() /></td></tr>
                                    {q.examples.iter().map(|e| view! {
                                        <tr class="example"><td colspan="2">
                                            <p class="meta">{format!("aligned {} · coherent {}", e.aligned.map_or("–".into(), |a| format!("{a:.0}")), e.coherent.map_or("–".into(), |c| format!("{c:.0}")))}</p>
                                            <pre class="answer">{e.answer.clone()}</pre>
                                        </td></tr>
                                    }).collect_view()}
                                }).collect_view()}
                            </table>
                        </details>
                    }).collect_view()}
                    {free.map(|f| view! { <h3>"Judge-free measurements"</h3><pre>{f}</pre> })}
                </section>
            }
            .into_any()
        }
    }
}

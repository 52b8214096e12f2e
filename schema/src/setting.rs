//! The sampling setting an answer was drawn at. The paper sampled at temperature 1, top-p 1; at
//! that setting SmolLM2-135M rarely writes a readable answer (about 5% coherent by the paper's
//! judge prompts, issue 50), while temperature 0.3, top-p 0.9 gives 3–5× more coherent answers. The
//! page opens at the readable setting, and answers, ratings and reports record which one they hold.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Setting {
    pub temperature: f32,
    pub top_p: f32,
}

/// Temperature 0 (greedy) up to 2, as the page's and the CLI's inputs allow.
pub const TEMPERATURE_RANGE: std::ops::RangeInclusive<f32> = 0.0..=2.0;

impl Setting {
    /// What the page opens at: answers a class can read.
    pub const READABLE: Setting = Setting { temperature: 0.3, top_p: 0.9 };
    /// The paper's: the model's own distribution, unsharpened.
    pub const PAPER: Setting = Setting { temperature: 1.0, top_p: 1.0 };

    /// The setting, or what is out of range: temperature in [`TEMPERATURE_RANGE`], top-p in (0, 1].
    pub fn new(temperature: f32, top_p: f32) -> Result<Setting, String> {
        if !TEMPERATURE_RANGE.contains(&temperature) {
            return Err(format!("temperature {temperature} is not between 0 and 2"));
        }
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(format!("top-p {top_p} is not above 0 and at most 1"));
        }
        Ok(Setting { temperature, top_p })
    }

    /// A short name for files and tables: `readable`, `paper`, or the two numbers.
    pub fn name(&self) -> String {
        match *self {
            Setting::READABLE => "readable".into(),
            Setting::PAPER => "paper".into(),
            Setting { temperature, top_p } => format!("t{temperature}-p{top_p}"),
        }
    }

    /// For people: `temperature 0.3, top-p 0.9`.
    pub fn label(&self) -> String {
        format!("temperature {}, top-p {}", self.temperature, self.top_p)
    }
}

impl std::fmt::Display for Setting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.label())
    }
}

#[cfg(test)]
mod tests {
    use super::Setting;

    #[test]
    fn settings_are_named_and_checked() {
        assert_eq!(Setting::READABLE.name(), "readable");
        assert_eq!(Setting::PAPER.name(), "paper");
        assert_eq!(Setting::new(0.7, 0.95).unwrap().name(), "t0.7-p0.95");
        assert_eq!(Setting::READABLE.label(), "temperature 0.3, top-p 0.9");
        assert!(Setting::new(2.5, 1.0).unwrap_err().contains("temperature 2.5"));
        assert!(Setting::new(1.0, 0.0).unwrap_err().contains("top-p 0"));
        assert!(Setting::new(1.0, f32::NAN).is_err());
        // As JSON writes and reads them, the presets stay themselves (a file names them exactly).
        let json = serde_json::to_string(&Setting::READABLE).unwrap();
        assert_eq!(json, r#"{"temperature":0.3,"top_p":0.9}"#);
        assert_eq!(serde_json::from_str::<Setting>(&json).unwrap(), Setting::READABLE);
    }
}

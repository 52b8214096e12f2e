//! `emlab chat`: an interactive conversation on stdin.

use std::io::{BufRead, Write};

use anyhow::Result;
use clap::Args;
use emlab::inference::answer;
use emlab_model::chat::Message;
use emlab_model::generate::FinishReason;

use super::{ModelArgs, SamplingArgs};

#[derive(Args)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[arg(long)]
    pub system: Option<String>,
}

pub fn run(a: ChatArgs) -> Result<()> {
    let ChatArgs { model, sampling, system } = a;
    let model = &model.load()?;
    let cfg = sampling.config(model)?;
    let fresh = || system.iter().map(|s| Message::system(s.clone())).collect::<Vec<_>>();
    let mut history = fresh();
    let stdin = std::io::stdin();
    eprintln!("chat with the model; /reset clears the conversation, /quit leaves");
    loop {
        eprint!("> ");
        std::io::stderr().flush().ok();
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            return Ok(());
        }
        match line.trim() {
            "" => continue,
            "/quit" | "/exit" => return Ok(()),
            "/reset" => {
                history = fresh();
                eprintln!("(conversation cleared)");
                continue;
            }
            text => history.push(Message::user(text)),
        }
        let ids = model.encode_chat(&history)?;
        match answer(model, &ids, &cfg, true) {
            Ok(g) => {
                println!();
                if g.finish == FinishReason::Length {
                    eprintln!("(stopped at --max-tokens {})", cfg.max_new_tokens);
                }
                history.push(Message::assistant(model.tokenizer.decode(&g.ids)?));
            }
            Err(e) => {
                history.pop();
                eprintln!("error: {e:#}\n(the conversation may be too long: /reset starts over)");
            }
        }
    }
}

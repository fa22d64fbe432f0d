//! `icet info`.
use anyhow::Result;
use clap::Args as ClapArgs;
use icet_models::vlm::registry;

use super::ModelArgs;

#[derive(ClapArgs, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

impl super::Run for Args {
    fn run(self) -> Result<()> {
        let info = registry::describe(self.model.model_dir()?)?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&info.json)?);
        } else {
            println!("{}", info.text());
        }
        Ok(())
    }
}

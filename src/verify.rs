use std::process::ExitCode;
use std::time::Instant;

use clap::Args;
use store::sqlite::SqliteEventStore;

use crate::data_dir::DataDir;

#[derive(Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    data: DataDir,
    /// Only check this tenant's streams.
    #[arg(long)]
    tenant: Option<String>,
}

pub async fn run(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let store = SqliteEventStore::open(&args.data.data_dir.join(crate::data_dir::EVENTS_DB))?;
    let started = Instant::now();
    let report = projections::integrity::verify_chains(&store, args.tenant.as_deref()).await?;
    let seconds = started.elapsed().as_secs_f64();
    println!("checked {} events in {} streams in {seconds:.2}s", report.events, report.streams);
    Ok(match report.first_break {
        None => {
            println!("every hash chain is intact");
            ExitCode::SUCCESS
        }
        Some(broken) => {
            println!("chain broken: {broken}");
            ExitCode::from(1)
        }
    })
}

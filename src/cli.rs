//! Command-line interface: argument types and the subcommands' bodies. `main.rs` only calls
//! [`main`].

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::args::{StoreArgs, parse_duration};
use crate::checkpoint::registry::{
    GcScope, collect_garbage, delete_planned, manual_policy, recorded_retention,
};
use crate::error::Result;
use crate::inventory;
use crate::restore::command::OutputFormat;
use crate::telemetry::{self, LogFormat};

/// The version `--version` prints; test builds say that they honour fault injection.
const VERSION: &str = if crate::fault::ENABLED {
    concat!(env!("CARGO_PKG_VERSION"), " (fault injection)")
} else {
    env!("CARGO_PKG_VERSION")
};

/// regroup: stateful, key-partitioned jobs on Kubernetes that rescale without losing state.
#[derive(Parser, Debug)]
#[command(name = "regroup", version = VERSION, about)]
pub struct Cli {
    /// Log format.
    #[arg(
        long,
        global = true,
        env = "REGROUP_LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// What a checkpoint store holds: checkpoints, handles, file references, garbage.
    #[command(subcommand)]
    Checkpoints(CheckpointsCommand),
    /// Prints regroup's CustomResourceDefinitions (StatefulJob, StatefulJobSnapshot) as YAML,
    /// or writes them as the files of `crds/`.
    Crd {
        /// Write one file per CRD into this directory (as `crds/` holds them) instead.
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
    /// Checks an installation: the CRDs are this version's, the operator answers and a replica
    /// renews the leader Lease (the chart's `helm test`).
    Check(crate::operator::install_check::CheckArgs),
    /// Runs the operator: watches StatefulJobs, coordinates checkpoints, orchestrates rescales.
    Operator(crate::operator::OperatorArgs),
    /// Runs the reference job's worker: deterministic keyed workload, checkpoint API.
    Worker(Box<crate::worker::reference::ReferenceWorkerArgs>),
    /// Checks a completed checkpoint of the reference job against its replayed events.
    Verify(crate::worker::oracle::VerifyArgs),
    /// The rescale plan: new key group ranges and, for a stored checkpoint, per new subtask the
    /// initial handle, the handles merged in and the bytes to download.
    Plan(crate::restore::command::PlanArgs),
    /// Builds one subtask's RocksDB from a completed checkpoint (the workers' init container).
    Restore(crate::restore::command::RestoreArgs),
}

/// `regroup checkpoints ...`
#[derive(Subcommand, Debug)]
pub enum CheckpointsCommand {
    /// One line per checkpoint: status, epoch, parallelism, bytes, files.
    List(ListArgs),
    /// Subtasks, ranges and files of completed checkpoints; `--files` prints the reference table.
    Show(ShowArgs),
    /// Deletes what no retained checkpoint references.
    Gc(GcArgs),
}

/// `regroup checkpoints list`
#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// text (a table) or json (an array with one object per checkpoint).
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Text)]
    output: OutputFormat,
}

/// `regroup checkpoints show`
#[derive(Args, Debug)]
pub struct ShowArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// text, or json (an array of the checkpoints' metadata, as stored).
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Text)]
    output: OutputFormat,
    /// Only this checkpoint (default: every completed one).
    #[arg(long)]
    checkpoint: Option<u64>,
    /// List every file with the checkpoints that reference it.
    #[arg(long)]
    files: bool,
}

/// `regroup checkpoints gc`
#[derive(Args, Debug)]
pub struct GcArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Completed checkpoints to keep, newest first (default: the job's retention as the operator
    /// recorded it in the store; without either, gc refuses to run).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    retain: Option<u64>,
    /// Unreferenced objects younger than this are kept (uploads in flight), e.g. 10m, 1h; never
    /// less than the longest checkpoint timeout the operator recorded for the job.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    grace: Duration,
    /// Print what would be deleted; delete nothing.
    #[arg(long)]
    dry_run: bool,
}

/// Entry point of the binary.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    run_main(cli.log_format, run(cli.command))
}

/// The `main` of regroup's binary and of jobs built on its runtime: logging in `log_format`,
/// the crypto provider, then `command` on a new Tokio runtime, its error printed and its
/// outcome the exit code.
pub fn run_main(
    log_format: LogFormat,
    command: impl std::future::Future<Output = Result<std::process::ExitCode>>,
) -> std::process::ExitCode {
    telemetry::init(log_format);
    crate::tls::install_crypto_provider();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn crd(dir: Option<&std::path::Path>) -> Result<()> {
    let files = crate::operator::crd::crd_files()?;
    match dir {
        Some(dir) => {
            for (name, yaml) in files {
                let path = dir.join(name);
                std::fs::write(&path, yaml).map_err(crate::Error::io("write", &path))?;
            }
        }
        None => {
            let docs: Vec<String> = files.into_iter().map(|(_, yaml)| yaml).collect();
            print!("{}", docs.join("---\n"));
        }
    }
    Ok(())
}

/// Runs one subcommand.
pub async fn run(command: Command) -> Result<std::process::ExitCode> {
    match command {
        Command::Checkpoints(c) => checkpoints(c).await?,
        Command::Crd { dir } => crd(dir.as_deref())?,
        Command::Check(args) => crate::operator::install_check::run(args).await?,
        Command::Operator(args) => crate::operator::run(args).await?,
        Command::Worker(args) => crate::worker::reference::main(*args).await?,
        Command::Verify(args) => return crate::worker::oracle::main(args).await,
        Command::Plan(args) => crate::restore::command::run_plan(args).await?,
        Command::Restore(args) => crate::restore::command::run_restore(args).await?,
    }
    Ok(std::process::ExitCode::SUCCESS)
}

async fn checkpoints(command: CheckpointsCommand) -> Result<()> {
    match command {
        CheckpointsCommand::List(args) => {
            let store = args.store.open()?;
            let rows = inventory::checkpoint_rows(&store).await?;
            match args.output {
                OutputFormat::Text => print!(
                    "{}",
                    inventory::rows_text(&rows, &store.job().to_string(), store.url())
                ),
                OutputFormat::Json => println!("{}", json(&rows)?),
            }
        }
        CheckpointsCommand::Show(args) => {
            let store = args.store.open()?;
            let metas = inventory::metadata(&store, args.checkpoint).await?;
            let shown = inventory::Shown::new(metas, args.files);
            match args.output {
                OutputFormat::Text => print!("{}", shown.text()),
                OutputFormat::Json => println!("{}", json(&shown)?),
            }
        }
        CheckpointsCommand::Gc(args) => {
            let store = args.store.open()?;
            let recorded = recorded_retention(&store).await?;
            let policy = manual_policy(args.retain, args.grace, recorded.as_ref(), store.url())?;
            println!(
                "policy: retain {}, grace {} ({})",
                policy.retain,
                humantime::format_duration(policy.grace),
                if recorded.is_some() {
                    "the operator's recorded retention applies where no flag overrides it"
                } else {
                    "no retention recorded by the operator"
                }
            );
            let plan = collect_garbage(&store, GcScope::Everything, policy, true).await?;
            if !args.dry_run {
                let bar = crate::terminal::items(plan.deletions.len() as u64, "deleting");
                delete_planned(&store, &plan, &|n| bar.set_position(n as u64)).await?;
                bar.finish_and_clear();
            }
            let verb = if args.dry_run {
                "would delete"
            } else {
                "deleted"
            };
            println!(
                "retained {:?}, subsumed {:?}, aborted {:?}, in flight {:?}",
                plan.retained, plan.subsumed, plan.aborted, plan.in_flight
            );
            for d in &plan.deletions {
                println!("{verb} {} ({} bytes, {:?})", d.path, d.size, d.reason);
            }
            for p in &plan.kept_young {
                println!("kept {p} (unreferenced, younger than the grace period)");
            }
            println!(
                "{verb} {} objects, {} bytes",
                plan.deletions.len(),
                plan.bytes()
            );
        }
    }
    Ok(())
}

fn json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string_pretty(value)
        .map_err(|e| crate::Error::Other(format!("cannot render JSON: {e}")))
}

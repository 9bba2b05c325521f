//! The `pageviews` binary: the job's worker, and two commands that read its checkpoints.

use clap::{Args, Parser, Subcommand};

use regroup::args::StoreArgs;
use regroup::telemetry::LogFormat;
use regroup::worker::WorkerConfig;
use regroup_example_pageviews::check;
use regroup_example_pageviews::job::{PageViews, PageViewsArgs};

/// pageviews: page views and view time per page, from append-only input files, on regroup.
#[derive(Parser, Debug)]
#[command(name = "pageviews", version, about)]
struct Cli {
    /// Log format.
    #[arg(
        long,
        global = true,
        env = "REGROUP_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs the job's worker (what the StatefulJob's pods run).
    Worker(Box<WorkerArgs>),
    /// Checks a completed checkpoint against the input: every key group held once, its state
    /// equal to its input lines up to its positions.
    Verify(VerifyArgs),
    /// Prints the totals per page in a completed checkpoint: PAGE, VIEWS, MILLIS (tab-separated).
    Results(ResultsArgs),
}

#[derive(Args, Debug)]
struct WorkerArgs {
    /// Runtime configuration (the operator sets it through the environment).
    #[command(flatten)]
    runtime: WorkerConfig,
    #[command(flatten)]
    job: PageViewsArgs,
}

#[derive(Args, Debug)]
struct VerifyArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The input directory the job reads.
    #[arg(long, env = "PAGEVIEWS_INPUT")]
    input: std::path::PathBuf,
    /// The checkpoint (default: the newest completed one).
    #[arg(long)]
    checkpoint: Option<u64>,
    /// Also require every input line to be counted (every position at the end of its file).
    #[arg(long)]
    complete: bool,
}

#[derive(Args, Debug)]
struct ResultsArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The checkpoint (default: the newest completed one).
    #[arg(long)]
    checkpoint: Option<u64>,
}

async fn run(command: Command) -> regroup::Result<std::process::ExitCode> {
    match command {
        Command::Worker(args) => {
            let identity = args.runtime.identity()?;
            let job = PageViews::new(args.job, identity.max_parallelism, identity.range);
            regroup::worker::run(args.runtime, job, regroup::worker::termination_signal()).await?;
        }
        Command::Verify(args) => {
            let state = check::read_checkpoint(&args.store.open()?, args.checkpoint).await?;
            let verdict = check::verify(&state, &args.input, args.complete)?;
            print!("{verdict}");
            if !verdict.ok() {
                return Ok(std::process::ExitCode::FAILURE);
            }
        }
        Command::Results(args) => {
            let state = check::read_checkpoint(&args.store.open()?, args.checkpoint).await?;
            for (page, (views, millis)) in check::totals(&state) {
                println!("{}\t{views}\t{millis}", String::from_utf8_lossy(&page));
            }
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    regroup::cli::run_main(cli.log_format, run(cli.command))
}

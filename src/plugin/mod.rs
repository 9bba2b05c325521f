//! `kubectl regroup`: the kubectl plugin (binary `kubectl-regroup`). It takes kubectl's
//! connection flags, reads the job and its Secret through the API and the job's store with
//! those credentials, and reuses what `regroup` itself prints (plans, the oracle, listings).
//! One module per subcommand; [`output`] renders, [`cluster`] connects.

pub mod checkpoint;
pub mod checkpoints;
pub mod cluster;
pub mod output;
pub mod plan;
pub mod report;
pub mod snapshot;
pub mod status;
pub mod verify;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use self::cluster::{Cluster, ConnectionArgs};
use self::output::{Output, render};
use crate::args::parse_duration;

/// kubectl regroup: inspect and operate regroup's StatefulJobs.
#[derive(Parser, Debug)]
#[command(
    name = "kubectl regroup",
    bin_name = "kubectl regroup",
    version = env!("CARGO_PKG_VERSION"),
    about = "kubectl regroup: inspect and operate regroup's StatefulJobs (health, checkpoints, snapshots, rescale plans, bug reports)"
)]
pub struct PluginCli {
    /// kubectl's connection flags.
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Output format of what the subcommand prints on stdout.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// What to do.
    #[command(subcommand)]
    pub command: PluginCommand,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum PluginCommand {
    /// Health, phase, rescale stage, workers, recent checkpoints, conditions and Events of a
    /// job; without NAME one line per job (-A: in every namespace).
    Status {
        /// The StatefulJob.
        name: Option<String>,
    },
    /// Asks for a checkpoint now and waits until it completes.
    Checkpoint {
        /// The StatefulJob.
        name: String,
        /// How long to wait.
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Creates a StatefulJobSnapshot of the job and waits until it holds its checkpoint.
    Snapshot {
        /// The StatefulJob.
        name: String,
        /// The snapshot's name (default: NAME-YYYYMMDD-HHMMSS).
        #[arg(long = "name", value_name = "SNAPSHOT")]
        snapshot: Option<String>,
        /// How long to wait.
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// The job's checkpoints in its store; --files or --checkpoint: their handles and files.
    Checkpoints {
        /// The StatefulJob.
        name: String,
        /// Every file with the checkpoints that reference it.
        #[arg(long)]
        files: bool,
        /// Only this checkpoint's handles (and files).
        #[arg(long)]
        checkpoint: Option<u64>,
    },
    /// What a rescale to N workers would download and reuse, from the newest checkpoint; the
    /// claims the job keeps count as reused.
    Plan {
        /// The StatefulJob.
        name: String,
        /// The new parallelism.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        to: u32,
        /// Plan from this checkpoint instead of the newest.
        #[arg(long)]
        checkpoint: Option<u64>,
    },
    /// The oracle of the reference job (`regroup worker`): every key group of a checkpoint
    /// equals the replay of its events. Exit status 1 on any difference.
    Verify {
        /// The StatefulJob.
        name: String,
        /// The checkpoint (default: the newest completed).
        #[arg(long)]
        checkpoint: Option<u64>,
    },
    /// Writes a tarball for a bug report: resources, Events, status, store listing, worker and
    /// operator logs; Secret data never, credential values redacted.
    Report {
        /// The StatefulJob.
        name: String,
        /// The tarball (default: regroup-report-NAMESPACE-NAME-TIME.tar.gz here).
        #[arg(long)]
        file: Option<std::path::PathBuf>,
    },
}

/// Entry point of `kubectl-regroup`.
pub fn main() -> ExitCode {
    let cli = PluginCli::parse();
    // Quiet unless asked: stdout and stderr belong to the subcommand's output and progress.
    if std::env::var_os("RUST_LOG").is_some() {
        crate::telemetry::init(crate::telemetry::LogFormat::Text);
    }
    crate::tls::install_crypto_provider();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok((text, code)) => {
            print!("{text}");
            code
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one subcommand: what to print on stdout and the exit status.
pub async fn run(cli: PluginCli) -> anyhow::Result<(String, ExitCode)> {
    let cluster = Cluster::connect(&cli.connection).await?;
    let o = cli.output;
    let ok = |text| Ok((text, ExitCode::SUCCESS));
    match cli.command {
        PluginCommand::Status { name: Some(name) } => {
            let s = status::one(&cluster, &name).await?;
            ok(render(o, &s, status::JobStatus::render)?)
        }
        PluginCommand::Status { name: None } => {
            let lines = status::all(&cluster, cli.connection.all_namespaces).await?;
            ok(render(o, &lines, |l| status::render_lines(l))?)
        }
        PluginCommand::Checkpoint { name, timeout } => {
            let c = checkpoint::run(&cluster, &name, timeout).await?;
            ok(render(o, &c, |c| {
                format!(
                    "{}\n",
                    checkpoint::describe(&checkpoint::Progress::Completed(c.clone()))
                )
            })?)
        }
        PluginCommand::Snapshot {
            name,
            snapshot,
            timeout,
        } => {
            let s = snapshot::run(&cluster, &name, snapshot, timeout).await?;
            ok(render(o, &s, |s| {
                format!(
                    "snapshot {} of {} ready: checkpoint {}, {} bytes, parallelism {}\n",
                    s.name,
                    s.job,
                    s.checkpoint_id.map_or("?".to_owned(), |i| i.to_string()),
                    s.bytes.unwrap_or(0),
                    s.parallelism.map_or("?".to_owned(), |p| p.to_string())
                )
            })?)
        }
        PluginCommand::Checkpoints {
            name,
            files,
            checkpoint,
        } => ok(checkpoints::run(&cluster, &name, files, checkpoint, o).await?),
        PluginCommand::Plan {
            name,
            to,
            checkpoint,
        } => {
            let p = plan::run(&cluster, &name, to, checkpoint).await?;
            ok(render(o, &p, plan::JobPlan::text)?)
        }
        PluginCommand::Verify { name, checkpoint } => {
            let v = verify::run(&cluster, &name, checkpoint).await?;
            let code = if v.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            };
            Ok((render(o, &v, |v| v.verdict.to_string())?, code))
        }
        PluginCommand::Report { name, file } => {
            let w = report::run(&cluster, &name, file).await?;
            ok(render(o, &w, report::Written::text)?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn kubectl_flags_go_anywhere() {
        PluginCli::command().debug_assert();
        let cli = PluginCli::try_parse_from([
            "kubectl-regroup",
            "status",
            "wc",
            "-n",
            "jobs",
            "--context",
            "prod",
            "-o",
            "json",
        ])
        .unwrap();
        assert_eq!(cli.connection.namespace.as_deref(), Some("jobs"));
        assert_eq!(cli.connection.context.as_deref(), Some("prod"));
        assert_eq!(cli.output, Output::Json);
        let cli = PluginCli::try_parse_from(["kubectl-regroup", "-A", "status"]).unwrap();
        assert!(cli.connection.all_namespaces);
        assert!(matches!(cli.command, PluginCommand::Status { name: None }));
    }

    #[test]
    fn bad_input_names_the_flag() {
        let e =
            PluginCli::try_parse_from(["kubectl-regroup", "plan", "wc", "--to", "0"]).unwrap_err();
        assert!(e.to_string().contains("--to"), "{e}");
        let e = PluginCli::try_parse_from(["kubectl-regroup", "status", "-o", "xml"]).unwrap_err();
        assert!(
            e.to_string().contains("json") && e.to_string().contains("yaml"),
            "{e}"
        );
        let e =
            PluginCli::try_parse_from(["kubectl-regroup", "checkpoint", "wc", "--timeout", "soon"])
                .unwrap_err();
        assert!(e.to_string().contains("--timeout"), "{e}");
    }
}

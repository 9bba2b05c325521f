//! `regroup plan` and `regroup restore`: arguments and bodies.

use std::fmt::Write;
use std::path::PathBuf;

use clap::{Args, ValueEnum};

use super::plan::{PlanOptions, RangePlan, RescalePlan, Strategy, plan, plan_ranges};
use super::{RestoreRequest, resolve_checkpoint, restore_subtask};
use crate::checkpoint::{CheckpointStore, JobId};
use crate::error::{Error, Result};

/// Output format of a command's result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Human-readable text.
    Text,
    /// JSON on stdout.
    Json,
}

/// `regroup plan`: the ranges of a rescale, or the full plan for a stored checkpoint.
#[derive(Args, Debug)]
pub struct PlanArgs {
    /// Number of key groups (required without --store; checked against the checkpoint with it).
    #[arg(long)]
    pub max_parallelism: Option<u32>,
    /// Old parallelism (ranges only; with --store it is the checkpoint's).
    #[arg(long)]
    pub from: Option<u32>,
    /// New parallelism.
    #[arg(long)]
    pub to: u32,
    /// Storage URL: plan against the handles of a stored checkpoint.
    #[arg(long, env = "REGROUP_STORE", requires = "job")]
    pub store: Option<String>,
    /// The job, as NAMESPACE/NAME (with --store).
    #[arg(long, env = "REGROUP_JOB")]
    pub job: Option<JobId>,
    /// Checkpoint id (with --store; default: the latest completed).
    #[arg(long)]
    pub checkpoint: Option<u64>,
    /// Merge strategy the byte counts assume.
    #[arg(long, value_enum, default_value_t = Strategy::Ingest)]
    pub strategy: Strategy,
    /// Handles with a smaller overlap fraction cannot be the initial handle.
    #[arg(long, default_value_t = 0.0)]
    pub overlap_fraction_threshold: f64,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

/// `regroup restore`: builds one subtask's DB from a completed checkpoint (the init container).
#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// Storage URL: file:///DIR, s3://BUCKET/PREFIX, gs://..., az://..., memory://NAME.
    #[arg(long, env = "REGROUP_STORE")]
    pub store: String,
    /// The job, as NAMESPACE/NAME.
    #[arg(long, env = "REGROUP_JOB")]
    pub job: JobId,
    /// Checkpoint id (default: the latest completed).
    #[arg(long, env = "REGROUP_CHECKPOINT")]
    pub checkpoint: Option<u64>,
    /// New subtask index (the pod's ordinal).
    #[arg(long, env = "REGROUP_SUBTASK")]
    pub subtask: u32,
    /// New parallelism.
    #[arg(long, env = "REGROUP_PARALLELISM")]
    pub parallelism: u32,
    /// Directory of the DB to build; its parent must be on the worker's volume.
    #[arg(long, env = "REGROUP_TARGET")]
    pub target: PathBuf,
    /// How handles are merged when the range changes.
    #[arg(long, env = "REGROUP_RESTORE_STRATEGY", value_enum, default_value_t = Strategy::Ingest)]
    pub strategy: Strategy,
    /// Handles with a smaller overlap fraction cannot be the initial handle (`copy`).
    #[arg(
        long,
        env = "REGROUP_OVERLAP_FRACTION_THRESHOLD",
        default_value_t = 0.0
    )]
    pub overlap_fraction_threshold: f64,
    /// Skip the compaction of the clipped key intervals (the worker compacts them later).
    #[arg(long, env = "REGROUP_RESTORE_DEFER_COMPACTION")]
    pub defer_compaction: bool,
    /// Output format of the summary.
    #[arg(long, env = "REGROUP_OUTPUT", value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    /// Fault injection for end-to-end tests (see `RestoreRequest::fault_pause_before_rename`).
    #[arg(long, env = "REGROUP_FAULT_RESTORE_PAUSE", hide = true, value_parser = crate::cli::parse_duration)]
    pub fault_pause_before_rename: Option<std::time::Duration>,
}

/// Runs `regroup plan`.
pub async fn run_plan(args: PlanArgs) -> Result<()> {
    let options = PlanOptions {
        strategy: args.strategy,
        overlap_fraction_threshold: args.overlap_fraction_threshold,
    };
    options.validate()?;
    match (&args.store, &args.job) {
        (Some(url), Some(job)) => {
            let store = CheckpointStore::from_url(url, job.clone())?;
            let meta = resolve_checkpoint(&store, args.checkpoint).await?;
            if let Some(m) = args.max_parallelism
                && m != meta.max_parallelism
            {
                return Err(Error::invalid(
                    "max-parallelism",
                    m,
                    format!(
                        "the checkpoint's max parallelism {} (or leave it out)",
                        meta.max_parallelism
                    ),
                ));
            }
            if let Some(p) = args.from
                && p != meta.parallelism
            {
                return Err(Error::invalid(
                    "from",
                    p,
                    format!(
                        "the checkpoint's parallelism {} (or leave it out)",
                        meta.parallelism
                    ),
                ));
            }
            let plan = plan(&meta, args.to, &options)?;
            match args.output {
                OutputFormat::Text => print!("{}", rescale_plan_text(&plan)),
                OutputFormat::Json => println!("{}", to_json(&plan)?),
            }
        }
        _ => {
            let m = args.max_parallelism.ok_or_else(|| {
                Error::invalid(
                    "max-parallelism",
                    "(missing)",
                    "a number of key groups, or --store and --job to read it from a checkpoint",
                )
            })?;
            let plan = plan_ranges(m, args.from, args.to)?;
            match args.output {
                OutputFormat::Text => print!("{}", range_plan_text(&plan)),
                OutputFormat::Json => println!("{}", to_json(&plan)?),
            }
        }
    }
    Ok(())
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string_pretty(value).map_err(|source| Error::Json {
        file: "stdout".into(),
        source,
    })
}

/// Runs `regroup restore`.
pub async fn run_restore(args: RestoreArgs) -> Result<()> {
    let store = CheckpointStore::from_url(&args.store, args.job.clone())?;
    let request = RestoreRequest {
        checkpoint: args.checkpoint,
        subtask: args.subtask,
        parallelism: args.parallelism,
        target: args.target,
        strategy: args.strategy,
        overlap_fraction_threshold: args.overlap_fraction_threshold,
        defer_compaction: args.defer_compaction,
        fault_pause_before_rename: args.fault_pause_before_rename,
    };
    let summary = restore_subtask(&store, &request).await?;
    match args.output {
        OutputFormat::Text => println!("{}", summary.line()),
        OutputFormat::Json => println!("{}", to_json(&summary)?),
    }
    Ok(())
}

/// The text of `regroup plan --max-parallelism M --to N [--from P]`.
pub fn range_plan_text(plan: &RangePlan) -> String {
    let mut out = String::new();
    match plan.from_parallelism {
        Some(p) => writeln!(
            out,
            "max parallelism {}: {} → {} subtasks",
            plan.max_parallelism, p, plan.to_parallelism
        ),
        None => writeln!(
            out,
            "max parallelism {}: {} subtasks",
            plan.max_parallelism, plan.to_parallelism
        ),
    }
    .ok();
    writeln!(
        out,
        "{:>7}  {:<14}  {:>10}  {:>7}  FROM (old subtask: key groups)",
        "SUBTASK", "KEY GROUPS", "GROUPS", "INITIAL"
    )
    .ok();
    for s in &plan.subtasks {
        let sources: Vec<String> = s.sources.iter().map(|(i, r)| format!("{i}:{r}")).collect();
        writeln!(
            out,
            "{:>7}  {:<14}  {:>10}  {:>7}  {}",
            s.subtask,
            s.range.to_string(),
            s.range.len(),
            s.initial.map_or("-".to_owned(), |i| i.to_string()),
            sources.join(" ")
        )
        .ok();
    }
    out
}

/// The text of `regroup plan --store ... --to N`.
pub fn rescale_plan_text(plan: &RescalePlan) -> String {
    let mut out = String::new();
    writeln!(
        out,
        "checkpoint {}: parallelism {} → {}, max parallelism {}, strategy {}, {} bytes to download in all ({} bytes in the whole intersecting handles)",
        plan.checkpoint_id,
        plan.from_parallelism,
        plan.to_parallelism,
        plan.max_parallelism,
        plan.strategy,
        plan.bytes_to_download(),
        plan.bytes_of_handles()
    )
    .ok();
    writeln!(
        out,
        "{:>7}  {:<14}  {:<9}  {:>7}  {:>5}  {:>14}  {:>14}  INPUTS (old subtask: key groups taken, method, files, bytes)",
        "SUBTASK", "KEY GROUPS", "KIND", "INITIAL", "FILES", "BYTES", "HANDLE BYTES"
    )
    .ok();
    for s in &plan.subtasks {
        let inputs: Vec<String> = s
            .inputs
            .iter()
            .map(|i| {
                let files = i.shared_files.len();
                let skipped = if i.skipped_files > 0 {
                    format!(", {} skipped", i.skipped_files)
                } else {
                    String::new()
                };
                let local = if i.local {
                    format!(", {} B local", i.local_bytes)
                } else {
                    String::new()
                };
                format!(
                    "{}:{} {} {} SST{}{} {} B{}",
                    i.old_subtask,
                    i.intersection,
                    i.method,
                    files,
                    if i.private_files { " + private" } else { "" },
                    skipped,
                    i.bytes,
                    local
                )
            })
            .collect();
        let files: usize = s
            .inputs
            .iter()
            .map(|i| i.shared_files.len() + usize::from(i.private_files))
            .sum();
        writeln!(
            out,
            "{:>7}  {:<14}  {:<9}  {:>7}  {:>5}  {:>14}  {:>14}  {}",
            s.subtask,
            s.range.to_string(),
            match s.kind {
                super::RestoreKind::Unchanged => "unchanged",
                super::RestoreKind::Rescaled => "rescaled",
            },
            s.initial.map_or("empty".to_owned(), |i| i.to_string()),
            files,
            s.bytes_to_download,
            s.bytes_of_handles,
            inputs.join("; ")
        )
        .ok();
    }
    out
}

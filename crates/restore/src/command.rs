//! `regroup plan` and `regroup restore`: arguments and bodies.

use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, ValueEnum};
use serde::Serialize;
use tracing::warn;

use super::plan::{
    PlanOptions, RangePlan, RescalePlan, Strategy, plan, plan_ranges, plan_subtask_with_local,
};
use super::{RestoreRequest, is_local_copy, local, restore_subtask};
use regroup_core::checkpoint::progress::{self, RestorePhase, Tracker};
use regroup_core::checkpoint::{CheckpointMetadata, CheckpointStore, JobId};
use regroup_core::error::{Error, Result};
use regroup_core::keygroup::KeyGroupRange;

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
    /// New subtask NEW's volume is DIR (the parent of the DB its restore builds, e.g. `/state`):
    /// its worker's checkpoint marker is matched as the restore does and the files of the handle
    /// it equals count as reused, not downloaded (with --store; repeatable).
    #[arg(long = "state-dir", value_name = "NEW=DIR", requires = "store")]
    pub state_dirs: Vec<String>,
    /// What if new subtask NEW's volume holds the DB of old subtask OLD as of the checkpoint
    /// (with --store; repeatable).
    #[arg(long = "local-subtask", value_name = "NEW=OLD", requires = "store")]
    pub local_subtasks: Vec<String>,
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
    /// Restore nothing: the worker starts with empty state, and whatever DB, checkpoint marker
    /// and native checkpoints the volume holds are removed (a generation for which no
    /// checkpoint exists yet).
    #[arg(long, env = "REGROUP_RESTORE_EMPTY", conflicts_with = "checkpoint")]
    pub empty: bool,
    /// New subtask index (the pod's ordinal).
    #[arg(long, env = "REGROUP_SUBTASK")]
    pub subtask: u32,
    /// The epoch of the generation restoring: with it, the restore writes its progress to the
    /// store (`_progress/epoch-<E>/<subtask>.json`, every 2 s) for the operator to show.
    #[arg(long, env = "REGROUP_EPOCH")]
    pub epoch: Option<u64>,
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
    /// Compact the clipped key intervals before the restore ends, instead of leaving it to the
    /// worker once running (the default: the job is back sooner).
    #[arg(long, env = "REGROUP_RESTORE_COMPACT")]
    pub compact: bool,
    /// Make the new DB durable (every file synced) before the restore ends. Off by default: the
    /// kernel writes the files back while the worker runs; after a reboot of the node an
    /// unsynced restore is not trusted (see `RestoreRequest::sync`).
    #[arg(long, env = "REGROUP_RESTORE_SYNC")]
    pub sync: bool,
    /// Without `--sync`: at most this many bytes of downloads go through the page cache (one of
    /// the four download lanes writes there), the rest with direct I/O (default: half of what
    /// this machine and container let be dirty before the kernel throttles writers, less what
    /// is dirty already).
    #[arg(long, env = "REGROUP_RESTORE_PAGE_CACHE_BUDGET")]
    pub page_cache_budget: Option<u64>,
    /// Output format of the summary.
    #[arg(long, env = "REGROUP_OUTPUT", value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
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
            let meta = store.checkpoint_or_latest(args.checkpoint).await?;
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
            let states = local_states(&args.state_dirs, &args.local_subtasks, &meta, args.to)?;
            let report = plan_with_local(&meta, args.to, &options, states)?;
            match args.output {
                OutputFormat::Text => print!("{}", rescale_plan_text(&report)),
                OutputFormat::Json => println!("{}", to_json(&report)?),
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

/// The local state a new subtask's restore would find, as `regroup plan` assumes it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalState {
    /// New subtask index.
    pub subtask: u32,
    /// Its volume (`--state-dir`); none for a what-if (`--local-subtask`).
    pub state_dir: Option<PathBuf>,
    /// Old subtask whose handle the local DB equals; none when there is no usable local DB.
    pub old_subtask: Option<u32>,
    /// The volume's DB already is the result of this very restore: nothing is downloaded.
    pub local_recovery: bool,
    /// Files of the local DB its marker vouches for (in any boot when they were synced before
    /// it, else in the boot it was written in): reused without reading them; the others it
    /// reuses are read back for their checksum.
    pub vouched_files: usize,
    /// Why nothing is reused, when nothing is.
    pub unused: Option<String>,
}

/// `regroup plan --store ...`: the rescale plan with the local state it assumes.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanReport {
    /// The plan; subtasks with a usable local DB are planned with it.
    #[serde(flatten)]
    pub plan: RescalePlan,
    /// One entry per new subtask given a `--state-dir` or `--local-subtask`, by subtask.
    pub local_states: Vec<LocalState>,
}

/// Splits `NEW=VALUE` of `flag` into a new subtask index below `to` and the value.
fn new_subtask_and<'a>(
    flag: &str,
    arg: &'a str,
    value_name: &str,
    to: u32,
) -> Result<(u32, &'a str)> {
    let expected = || format!("NEW={value_name}, NEW a new subtask index below --to {to}");
    let (new, value) = arg
        .split_once('=')
        .ok_or_else(|| Error::invalid(flag, arg, expected()))?;
    let new: u32 = new
        .trim()
        .parse()
        .map_err(|_| Error::invalid(flag, arg, expected()))?;
    if new >= to {
        return Err(Error::invalid(flag, arg, expected()));
    }
    Ok((new, value))
}

/// Reads and checks `--state-dir NEW=DIR` and `--local-subtask NEW=OLD`: for each, which handle
/// the local DB equals, matched as the restore does (`local::find` on the target's parent).
pub fn local_states(
    state_dirs: &[String],
    local_subtasks: &[String],
    meta: &CheckpointMetadata,
    to: u32,
) -> Result<Vec<LocalState>> {
    let mut out: Vec<LocalState> = Vec::new();
    let mut add = |flag: &str, arg: &str, state: LocalState| {
        if out.iter().any(|s| s.subtask == state.subtask) {
            return Err(Error::invalid(
                flag,
                arg,
                format!(
                    "one --state-dir or --local-subtask per new subtask; {} has one already",
                    state.subtask
                ),
            ));
        }
        out.push(state);
        Ok(())
    };
    for arg in state_dirs {
        let (new, dir) = new_subtask_and("--state-dir", arg, "DIR", to)?;
        let dir = Path::new(dir);
        if !dir.is_dir() {
            return Err(Error::invalid(
                "--state-dir",
                arg,
                "NEW=DIR, DIR an existing directory: the volume holding the DB (db/) and the worker's checkpoint marker",
            ));
        }
        let range = KeyGroupRange::for_subtask(meta.max_parallelism, to, new)?;
        let target = regroup_core::statedir::db_dir(dir);
        let state = if is_local_copy(
            &target,
            &meta.job,
            meta.checkpoint_id,
            meta.max_parallelism,
            range,
        ) {
            LocalState {
                subtask: new,
                state_dir: Some(dir.to_owned()),
                old_subtask: None,
                local_recovery: true,
                vouched_files: 0,
                unused: None,
            }
        } else {
            let found = local::examine(dir, meta);
            LocalState {
                subtask: new,
                state_dir: Some(dir.to_owned()),
                old_subtask: found.as_ref().ok().map(|l| l.old_subtask),
                local_recovery: false,
                vouched_files: found.as_ref().map_or(0, |l| l.files.len()),
                unused: found.err().map(|why| why.to_string()),
            }
        };
        add("--state-dir", arg, state)?;
    }
    for arg in local_subtasks {
        let (new, old) = new_subtask_and("--local-subtask", arg, "OLD", to)?;
        let old = old
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|&o| o < meta.parallelism)
            .ok_or_else(|| {
                Error::invalid(
                    "--local-subtask",
                    arg,
                    format!(
                        "NEW=OLD, OLD an old subtask index below the checkpoint's parallelism {}",
                        meta.parallelism
                    ),
                )
            })?;
        let state = LocalState {
            subtask: new,
            state_dir: None,
            old_subtask: Some(old),
            local_recovery: false,
            vouched_files: 0,
            unused: None,
        };
        add("--local-subtask", arg, state)?;
    }
    out.sort_by_key(|s| s.subtask);
    Ok(out)
}

/// The plan of every new subtask, each with the local DB of `states` the restore would use.
pub fn plan_with_local(
    meta: &CheckpointMetadata,
    to: u32,
    options: &PlanOptions,
    mut states: Vec<LocalState>,
) -> Result<PlanReport> {
    let mut plan = plan(meta, to, options)?;
    for state in &mut states {
        let planned = &mut plan.subtasks[state.subtask as usize];
        if state.local_recovery {
            // The restore keeps the target as it is.
            planned.bytes_local += planned.bytes_to_download;
            planned.bytes_to_download = 0;
            continue;
        }
        let Some(old) = state.old_subtask else {
            continue;
        };
        let handle = meta
            .handles
            .iter()
            .find(|h| h.subtask == old)
            .ok_or_else(|| {
                Error::invalid(
                    "--local-subtask",
                    old,
                    format!("a subtask of checkpoint {}", meta.checkpoint_id),
                )
            })?;
        if handle
            .key_group_range
            .intersection(&planned.range)
            .is_none()
        {
            state.unused = Some(format!(
                "the local DB equals the handle of old subtask {old} (key groups {}), which holds none of key groups {}",
                handle.key_group_range, planned.range
            ));
            continue;
        }
        *planned = plan_subtask_with_local(meta, to, state.subtask, options, Some(old))?;
    }
    Ok(PlanReport {
        plan,
        local_states: states,
    })
}

/// Runs `regroup restore`.
pub async fn run_restore(args: RestoreArgs) -> Result<()> {
    if args.empty {
        let e = super::start_empty(&args.target)?;
        println!(
            "started empty: no checkpoint to restore for subtask {}/{} of {}; removed {} files ({} bytes) left on the volume",
            args.subtask, args.parallelism, args.job, e.files, e.bytes
        );
        return Ok(());
    }
    let store = CheckpointStore::from_url(&args.store, args.job.clone())?;
    let progress = Arc::new(Tracker::default());
    let reporter = args
        .epoch
        .map(|epoch| tokio::spawn(report(store.clone(), epoch, args.subtask, progress.clone())));
    let request = RestoreRequest {
        checkpoint: args.checkpoint,
        subtask: args.subtask,
        parallelism: args.parallelism,
        target: args.target,
        strategy: args.strategy,
        overlap_fraction_threshold: args.overlap_fraction_threshold,
        compact: args.compact,
        sync: args.sync,
        page_cache_budget: args.page_cache_budget,
        fault_pause_before_rename: regroup_core::fault::faults().restore_pause,
        progress: progress.clone(),
    };
    let bar = regroup_core::terminal::bytes(0, "planning");
    let drawer = tokio::spawn(draw(progress.clone(), bar.clone()));
    let result = restore_subtask(&store, &request).await;
    drawer.abort();
    bar.finish_and_clear();
    if let (Some(reporter), Some(epoch)) = (reporter, args.epoch) {
        reporter.abort();
        if result.is_ok() {
            progress.advance(RestorePhase::Done);
            if let Err(e) = progress::write(&store, epoch, &progress.snapshot(args.subtask)).await {
                warn!(error = %e, "cannot record the restore's progress");
            }
        }
    }
    let summary = result?;
    match args.output {
        OutputFormat::Text => println!("{}", summary.line()),
        OutputFormat::Json => println!("{}", to_json(&summary)?),
    }
    Ok(())
}

/// Shows the restore's progress on a terminal (nothing elsewhere).
async fn draw(progress: Arc<Tracker>, bar: indicatif::ProgressBar) {
    if bar.is_hidden() {
        return;
    }
    loop {
        let now = progress.snapshot(0);
        bar.set_length(now.bytes_total);
        bar.set_position(now.bytes_done);
        bar.set_message(format!("{:?}", now.phase).to_lowercase());
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Writes the restore's progress every 2 s while it changes (best effort: a store that
/// refuses it only leaves the operator without progress to show).
async fn report(store: CheckpointStore, epoch: u64, subtask: u32, progress: Arc<Tracker>) {
    let mut written = None;
    let mut warned = false;
    loop {
        let now = progress.snapshot(subtask);
        let key = (now.phase, now.bytes_done, now.bytes_total);
        if written != Some(key) {
            match progress::write(&store, epoch, &now).await {
                Ok(()) => written = Some(key),
                Err(e) if !warned => {
                    warn!(error = %e, "cannot record the restore's progress");
                    warned = true;
                }
                Err(_) => {}
            }
        }
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
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
pub fn rescale_plan_text(report: &PlanReport) -> String {
    let plan = &report.plan;
    let mut out = String::new();
    let reused: u64 = plan.subtasks.iter().map(|s| s.bytes_local).sum();
    writeln!(
        out,
        "checkpoint {}: parallelism {} → {}, max parallelism {}, strategy {}, {} bytes to download in all, {} reused locally ({} bytes in the whole intersecting handles)",
        plan.checkpoint_id,
        plan.from_parallelism,
        plan.to_parallelism,
        plan.max_parallelism,
        plan.strategy,
        plan.bytes_to_download(),
        reused,
        plan.bytes_of_handles()
    )
    .ok();
    writeln!(
        out,
        "{:>7}  {:<14}  {:<9}  {:>7}  {:>5}  {:>14}  {:>14}  {:>14}  {:>14}  INPUTS (old subtask: key groups taken, method, files, bytes)",
        "SUBTASK", "KEY GROUPS", "KIND", "INITIAL", "FILES", "FETCH", "REUSE", "DOWNLOAD", "HANDLE BYTES"
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
            "{:>7}  {:<14}  {:<9}  {:>7}  {:>5}  {:>14}  {:>14}  {:>14}  {:>14}  {}",
            s.subtask,
            s.range.to_string(),
            match s.kind {
                super::RestoreKind::Unchanged => "unchanged",
                super::RestoreKind::Rescaled => "rescaled",
            },
            s.initial.map_or("empty".to_owned(), |i| i.to_string()),
            files,
            s.bytes_to_download + s.bytes_local,
            s.bytes_local,
            s.bytes_to_download,
            s.bytes_of_handles,
            inputs.join("; ")
        )
        .ok();
    }
    for l in &report.local_states {
        let source = match &l.state_dir {
            Some(dir) => format!("state dir {}", dir.display()),
            None => "assumed (--local-subtask)".to_owned(),
        };
        let what = if l.local_recovery {
            "its DB already is this restore's result (local recovery): nothing downloaded"
                .to_owned()
        } else if let Some(why) = &l.unused {
            format!("nothing reused: {why}")
        } else if let Some(old) = l.old_subtask {
            let reused = plan.subtasks[l.subtask as usize].bytes_local;
            format!(
                "the local DB equals the handle of old subtask {old}: {reused} bytes reused ({} of its files vouched for by its marker, the others read back)",
                l.vouched_files
            )
        } else {
            "nothing reused".to_owned()
        };
        writeln!(
            out,
            "local state of new subtask {} ({source}): {what}",
            l.subtask
        )
        .ok();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checkpoint 5 at parallelism 2 of M = 8: each handle has two SSTs (one per half of its
    /// range) of 1000 and 1001 bytes and a 16-byte private file.
    fn meta() -> CheckpointMetadata {
        regroup_core::checkpoint::testing::checkpoint(8, 2, 2)
    }

    fn state(subtask: u32, old_subtask: Option<u32>) -> LocalState {
        LocalState {
            subtask,
            state_dir: None,
            old_subtask,
            local_recovery: false,
            vouched_files: 0,
            unused: None,
        }
    }

    #[test]
    fn a_local_handle_moves_bytes_from_download_to_reuse() {
        let meta = meta();
        let options = PlanOptions::default();
        let fresh = plan_with_local(&meta, 1, &options, vec![]).unwrap();
        let s = &fresh.plan.subtasks[0];
        assert_eq!((s.bytes_to_download, s.bytes_local), (4002, 0));
        // Old 1's DB on the volume of new 0 (scale-in 2 → 1): its 2001 SST bytes are reused.
        let kept = plan_with_local(&meta, 1, &options, vec![state(0, Some(1))]).unwrap();
        let s = &kept.plan.subtasks[0];
        assert_eq!((s.bytes_to_download, s.bytes_local), (2001, 2001));
        assert_eq!(s.initial, Some(1));
        assert_eq!(kept.local_states[0].unused, None);
        // Scale-out 2 → 4: new 1 = [2,3] needs only old 0's second SST (1001 B).
        let out = plan_with_local(&meta, 4, &options, vec![state(1, Some(0))]).unwrap();
        let s = &out.plan.subtasks[1];
        assert_eq!((s.bytes_to_download, s.bytes_local), (0, 1001));
        // A local handle that holds none of the new range reuses nothing and says why.
        let none = plan_with_local(&meta, 2, &options, vec![state(0, Some(1))]).unwrap();
        let fresh2 = plan(&meta, 2, &options).unwrap();
        assert_eq!(none.plan.subtasks, fresh2.subtasks);
        let why = none.local_states[0].unused.as_deref().unwrap();
        assert!(why.contains("holds none of key groups [0, 3]"), "{why}");
        // A state dir that already holds this restore downloads nothing.
        let mut recovered = state(1, None);
        recovered.local_recovery = true;
        let r = plan_with_local(&meta, 2, &options, vec![recovered]).unwrap();
        let s = &r.plan.subtasks[1];
        assert_eq!((s.bytes_to_download, s.bytes_local), (0, 2017));
        // A what-if with nothing usable changes nothing.
        let nothing = plan_with_local(&meta, 1, &options, vec![state(0, None)]).unwrap();
        assert_eq!(nothing.plan, fresh.plan);
    }

    #[test]
    fn local_state_arguments_are_checked() {
        let meta = meta();
        let e = |dirs: &[&str], olds: &[&str]| {
            let dirs: Vec<String> = dirs.iter().map(|s| s.to_string()).collect();
            let olds: Vec<String> = olds.iter().map(|s| s.to_string()).collect();
            local_states(&dirs, &olds, &meta, 2)
                .unwrap_err()
                .to_string()
        };
        assert!(e(&[], &["2=0"]).contains(
            "invalid --local-subtask = 2=0: NEW=OLD, NEW a new subtask index below --to 2"
        ));
        assert!(
            e(&[], &["0=2"])
                .contains("OLD an old subtask index below the checkpoint's parallelism 2")
        );
        assert!(e(&[], &["0"]).contains("invalid --local-subtask = 0"));
        assert!(
            e(&[], &["0=0", "0=1"]).contains("one --state-dir or --local-subtask per new subtask")
        );
        assert!(e(&["0=/nonexistent/regroup-volume"], &[]).contains("DIR an existing directory"));
        let ok = local_states(&[], &["1=0".into(), "0=1".into()], &meta, 2).unwrap();
        assert_eq!(ok, vec![state(0, Some(1)), state(1, Some(0))]);
    }
}

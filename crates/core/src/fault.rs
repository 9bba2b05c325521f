//! Fault points for the tests: knobs read once from `REGROUP_FAULT_*` environment variables.
//!
//! They are honoured only in builds with the `fault-injection` feature (what `./test` builds);
//! any other build ignores them and says so in its log, so that no setting in a pod's
//! environment can make a production worker, restore or operator misbehave on purpose.
//!
//! | variable | who | what |
//! |---|---|---|
//! | `REGROUP_FAULT_UPLOAD_DELAY` | worker | wait this long between a native checkpoint and its upload |
//! | `REGROUP_FAULT_UPLOAD_DELAY_SUBTASKS` | worker | only these subtasks wait (comma-separated; default all) |
//! | `REGROUP_FAULT_FAIL_UPLOADS` | worker | the first N uploads of the process fail before writing anything |
//! | `REGROUP_FAULT_FAIL_UPLOADS_EPOCH` | worker | every upload of a worker of this epoch fails |
//! | `REGROUP_FAULT_WORKER_EXIT_AFTER` | worker | exit with status 1 this long after starting (a crash loop) |
//! | `REGROUP_FAULT_RESTORE_PAUSE` | restore | pause this long with the new DB built, before the rename |
//! | `REGROUP_FAULT_EXIT_AFTER_METADATA` | operator | a file: when it exists and names a job, the operator removes it and exits right after writing that job's next `_metadata.json` |

use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Every knob, as read from the environment.
#[derive(Debug, Default)]
pub struct Faults {
    /// Delay before each upload.
    pub upload_delay: Option<Duration>,
    /// Subtasks the delay applies to (none: all).
    pub upload_delay_subtasks: Option<Vec<u32>>,
    /// Uploads still to fail.
    fail_uploads: AtomicU32,
    /// Epoch whose uploads all fail.
    pub fail_uploads_epoch: Option<u64>,
    /// Pause of the restore before its rename.
    pub restore_pause: Option<Duration>,
    /// The worker exits (crashes) this long after it started.
    pub worker_exit_after: Option<Duration>,
    /// The operator's one-shot exit after writing metadata (see the module doc).
    pub exit_after_metadata: Option<PathBuf>,
}

/// Whether this build honours the knobs.
pub const ENABLED: bool = cfg!(feature = "fault-injection");

/// The knobs of this process (all off unless [`ENABLED`]).
pub fn faults() -> &'static Faults {
    static FAULTS: OnceLock<Faults> = OnceLock::new();
    FAULTS.get_or_init(|| {
        let set: Vec<String> = std::env::vars()
            .map(|(k, _)| k)
            .filter(|k| k.starts_with("REGROUP_FAULT_"))
            .collect();
        if !ENABLED {
            if !set.is_empty() {
                tracing::warn!(
                    variables = %set.join(","),
                    "fault injection is not compiled into this build; ignoring the variables"
                );
            }
            return Faults::default();
        }
        let faults = Faults::from_lookup(|k| std::env::var(k).ok());
        if !set.is_empty() {
            tracing::warn!(?faults, "fault injection armed");
        }
        faults
    })
}

impl Faults {
    /// The knobs from a variable lookup; malformed values are ignored with a warning.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        fn parsed<T>(
            name: &str,
            value: Option<String>,
            parse: impl Fn(&str) -> Option<T>,
        ) -> Option<T> {
            let value = value?;
            let v = parse(value.trim());
            if v.is_none() {
                tracing::warn!(variable = name, %value, "malformed fault injection value ignored");
            }
            v
        }
        let duration = |s: &str| humantime::parse_duration(s).ok();
        let knob = |name: &'static str| (name, get(name));
        let (n, v) = knob("REGROUP_FAULT_UPLOAD_DELAY");
        let upload_delay = parsed(n, v, duration);
        let (n, v) = knob("REGROUP_FAULT_UPLOAD_DELAY_SUBTASKS");
        let upload_delay_subtasks = parsed(n, v, |s| {
            s.split(',')
                .map(|x| x.trim().parse().ok())
                .collect::<Option<Vec<u32>>>()
        });
        let (n, v) = knob("REGROUP_FAULT_FAIL_UPLOADS");
        let fail_uploads = parsed(n, v, |s| s.parse().ok()).unwrap_or(0);
        let (n, v) = knob("REGROUP_FAULT_FAIL_UPLOADS_EPOCH");
        let fail_uploads_epoch = parsed(n, v, |s| s.parse().ok());
        let (n, v) = knob("REGROUP_FAULT_RESTORE_PAUSE");
        let restore_pause = parsed(n, v, duration);
        let (n, v) = knob("REGROUP_FAULT_WORKER_EXIT_AFTER");
        let worker_exit_after = parsed(n, v, duration);
        let exit_after_metadata = get("REGROUP_FAULT_EXIT_AFTER_METADATA")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from);
        Faults {
            upload_delay,
            upload_delay_subtasks,
            fail_uploads: AtomicU32::new(fail_uploads),
            fail_uploads_epoch,
            restore_pause,
            worker_exit_after,
            exit_after_metadata,
        }
    }

    /// The delay before an upload of `subtask`, if any.
    pub fn upload_delay_for(&self, subtask: u32) -> Option<Duration> {
        let applies = self
            .upload_delay_subtasks
            .as_ref()
            .is_none_or(|s| s.contains(&subtask));
        self.upload_delay.filter(|_| applies)
    }

    /// Whether this upload of a worker of `epoch` fails (counting down the failures to come).
    pub fn fail_upload(&self, epoch: u64) -> bool {
        if self.fail_uploads_epoch == Some(epoch) {
            return true;
        }
        self.fail_uploads
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    /// Whether the operator exits after writing the metadata of `job` (`NAMESPACE/NAME`): the
    /// knob's file exists and names it; the file is removed first, so it fires once.
    pub fn exit_after_metadata(&self, job: &str) -> bool {
        let Some(file) = &self.exit_after_metadata else {
            return false;
        };
        let named = std::fs::read_to_string(file).is_ok_and(|s| s.trim() == job);
        named && std::fs::remove_file(file).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn faults(vars: &[(&str, &str)]) -> Faults {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Faults::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn knobs_parse_and_count_down() {
        let f = faults(&[
            ("REGROUP_FAULT_UPLOAD_DELAY", "2s"),
            ("REGROUP_FAULT_UPLOAD_DELAY_SUBTASKS", "1, 3"),
            ("REGROUP_FAULT_FAIL_UPLOADS", "2"),
            ("REGROUP_FAULT_FAIL_UPLOADS_EPOCH", "7"),
            ("REGROUP_FAULT_WORKER_EXIT_AFTER", "15s"),
        ]);
        assert_eq!(f.worker_exit_after, Some(Duration::from_secs(15)));
        assert_eq!(f.upload_delay_for(1), Some(Duration::from_secs(2)));
        assert_eq!(f.upload_delay_for(0), None);
        assert!(f.fail_upload(1) && f.fail_upload(1));
        assert!(!f.fail_upload(1), "only the first two fail");
        assert!(f.fail_upload(7), "every upload of epoch 7 fails");
        let none = faults(&[("REGROUP_FAULT_UPLOAD_DELAY", "soon")]);
        assert_eq!(
            none.upload_delay_for(0),
            None,
            "malformed values are ignored"
        );
        assert!(!none.fail_upload(1));
    }

    #[test]
    fn exit_after_metadata_fires_once_for_the_named_job() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("exit");
        let f = faults(&[("REGROUP_FAULT_EXIT_AFTER_METADATA", file.to_str().unwrap())]);
        assert!(!f.exit_after_metadata("ns/a"), "not armed");
        std::fs::write(&file, "ns/a\n").unwrap();
        assert!(!f.exit_after_metadata("ns/b"), "another job");
        assert!(f.exit_after_metadata("ns/a"));
        assert!(!f.exit_after_metadata("ns/a"), "one shot");
    }
}

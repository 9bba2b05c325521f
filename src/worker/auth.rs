//! Who may drive a worker's checkpoints: a bearer token shared with the operator (from the job's
//! Secret) and the worker generation's fencing epoch. Pure decisions, so they are unit-tested
//! without a server.

use axum::http::StatusCode;
use serde::Serialize;

/// Why a request was refused, with the HTTP status it maps to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "refused", rename_all = "snake_case")]
pub enum Refusal {
    /// No `Authorization: Bearer ...` header.
    MissingToken,
    /// A bearer token that is not this job's.
    WrongToken,
    /// The request names an epoch other than this worker generation's.
    StaleEpoch {
        /// Epoch carried by the request.
        requested: u64,
        /// Epoch of this worker.
        current: u64,
    },
}

impl Refusal {
    /// 401 for token problems, 403 for another epoch.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::MissingToken | Refusal::WrongToken => StatusCode::UNAUTHORIZED,
            Refusal::StaleEpoch { .. } => StatusCode::FORBIDDEN,
        }
    }

    /// A message for the response body and the log.
    pub fn message(&self) -> String {
        match self {
            Refusal::MissingToken => {
                "missing bearer token: send Authorization: Bearer <the job's checkpoint token>"
                    .to_owned()
            }
            Refusal::WrongToken => "wrong bearer token for this job".to_owned(),
            Refusal::StaleEpoch { requested, current } => {
                format!("fenced: request for epoch {requested}, this worker runs epoch {current}")
            }
        }
    }
}

/// The bearer token this worker accepts.
#[derive(Clone)]
pub struct BearerToken(String);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

impl BearerToken {
    /// A token from the content of a token file (surrounding whitespace ignored); `None` when
    /// nothing is left.
    pub fn from_file_content(content: &str) -> Option<Self> {
        let t = content.trim();
        (!t.is_empty()).then(|| BearerToken(t.to_owned()))
    }

    /// Checks an `Authorization` header value against the token.
    pub fn check(&self, authorization: Option<&str>) -> Result<(), Refusal> {
        let Some(value) = authorization else {
            return Err(Refusal::MissingToken);
        };
        let presented = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim);
        match presented {
            None | Some("") => Err(Refusal::MissingToken),
            Some(p) if constant_time_eq(p.as_bytes(), self.0.as_bytes()) => Ok(()),
            Some(_) => Err(Refusal::WrongToken),
        }
    }
}

/// The token file a worker was given (a mounted Secret) and the token last read from it. A
/// request with another token makes it read the file again (at most once a second): when the
/// Secret is replaced, the kubelet updates the file and the worker follows without a restart.
#[derive(Debug)]
pub struct TokenFile {
    path: std::path::PathBuf,
    current: std::sync::Mutex<(BearerToken, Option<std::time::Instant>)>,
}

/// Shortest time between two reads of the token file prompted by wrong tokens.
const RELOAD_SPACING: std::time::Duration = std::time::Duration::from_secs(1);

impl TokenFile {
    /// Reads the token at `path`; an unreadable or empty file is an error naming it.
    pub fn open(path: &std::path::Path) -> crate::Result<Self> {
        let token = read_token(path)?;
        Ok(Self {
            path: path.to_owned(),
            current: std::sync::Mutex::new((token, None)),
        })
    }

    /// Checks an `Authorization` header value against the token, reading the file again when
    /// a well-formed but different token arrives.
    pub fn check(&self, authorization: Option<&str>) -> Result<(), Refusal> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        match current.0.check(authorization) {
            Err(Refusal::WrongToken) => {}
            other => return other,
        }
        if current.1.is_some_and(|t| t.elapsed() < RELOAD_SPACING) {
            return Err(Refusal::WrongToken);
        }
        current.1 = Some(std::time::Instant::now());
        match read_token(&self.path) {
            Ok(t) if t.0 != current.0.0 => {
                tracing::info!(file = %self.path.display(), "the token file changed; using the new token");
                current.0 = t;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the token file again; keeping the token")
            }
        }
        current.0.check(authorization)
    }
}

fn read_token(path: &std::path::Path) -> crate::Result<BearerToken> {
    let content =
        std::fs::read_to_string(path).map_err(crate::Error::io("read token file", path))?;
    BearerToken::from_file_content(&content).ok_or_else(|| {
        crate::Error::invalid(
            "token file",
            path.display(),
            "a file holding the job's checkpoint token (it is empty)",
        )
    })
}

/// Compares without an early exit, so response times do not reveal a token's prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks the epoch a request carries against this worker's.
pub fn check_epoch(requested: u64, current: u64) -> Result<(), Refusal> {
    if requested == current {
        Ok(())
    } else {
        Err(Refusal::StaleEpoch { requested, current })
    }
}

/// Token first (a caller without the token learns nothing about epochs), then the epoch;
/// `token` is the outcome of the token check.
pub fn admit(
    token: Result<(), Refusal>,
    requested_epoch: Option<u64>,
    current_epoch: u64,
) -> Result<(), Refusal> {
    token?;
    match requested_epoch {
        Some(e) => check_epoch(e, current_epoch),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> BearerToken {
        BearerToken::from_file_content("  s3cret-token\n").unwrap()
    }

    #[test]
    fn token_file_content_is_trimmed_and_must_not_be_empty() {
        assert!(BearerToken::from_file_content(" \n").is_none());
        assert_eq!(token().check(Some("Bearer s3cret-token")), Ok(()));
    }

    #[test]
    fn missing_or_malformed_header_is_401_missing() {
        let t = token();
        for h in [
            None,
            Some(""),
            Some("Bearer "),
            Some("Basic czNjcmV0"),
            Some("s3cret-token"),
        ] {
            let r = t.check(h).unwrap_err();
            assert_eq!(r, Refusal::MissingToken, "{h:?}");
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        }
    }

    #[test]
    fn wrong_token_is_401_wrong() {
        let t = token();
        for h in [
            "Bearer s3cret-tokeN",
            "Bearer s3cret-token2",
            "Bearer s3cret",
            "Bearer x",
        ] {
            let r = t.check(Some(h)).unwrap_err();
            assert_eq!(r, Refusal::WrongToken, "{h}");
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        }
    }

    #[test]
    fn other_epoch_is_403_only_with_the_right_token() {
        let t = token();
        let r = admit(t.check(Some("Bearer s3cret-token")), Some(3), 4).unwrap_err();
        assert_eq!(
            r,
            Refusal::StaleEpoch {
                requested: 3,
                current: 4
            }
        );
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert!(r.message().contains("epoch 3") && r.message().contains("epoch 4"));
        // A newer epoch is refused too: a worker never acts for a generation it is not.
        assert!(admit(t.check(Some("Bearer s3cret-token")), Some(5), 4).is_err());
        // Without the token the epoch is not even looked at.
        assert_eq!(
            admit(t.check(Some("Bearer nope")), Some(3), 4),
            Err(Refusal::WrongToken)
        );
        assert_eq!(admit(t.check(None), Some(4), 4), Err(Refusal::MissingToken));
        assert_eq!(
            admit(t.check(Some("Bearer s3cret-token")), Some(4), 4),
            Ok(())
        );
        assert_eq!(admit(t.check(Some("Bearer s3cret-token")), None, 4), Ok(()));
    }

    #[test]
    fn a_changed_token_file_is_followed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "old-token\n").unwrap();
        let file = TokenFile::open(&path).unwrap();
        assert_eq!(file.check(Some("Bearer old-token")), Ok(()));
        // The Secret was replaced: the kubelet rewrites the mounted file.
        std::fs::write(&path, "new-token\n").unwrap();
        assert_eq!(file.check(Some("Bearer new-token")), Ok(()));
        assert_eq!(
            file.check(Some("Bearer old-token")),
            Err(Refusal::WrongToken),
            "the old token is no longer accepted"
        );
        std::fs::write(&path, "").unwrap();
        assert!(
            TokenFile::open(&path).is_err(),
            "an empty token file is refused"
        );
    }

    #[test]
    fn debug_does_not_print_the_token() {
        assert!(!format!("{:?}", token()).contains("s3cret"));
    }
}

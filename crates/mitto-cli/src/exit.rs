//! Exit codes: a script tells a mistyped command from a broker that is away from a service
//! that did not answer in time, as with `curl`.

use mitto::Status;
use std::process::ExitCode;

/// Any other failure: refused by the broker (auth, permissions, limits), a bad configuration.
pub(crate) const OTHER: u8 = 1;
/// Usage: an unknown flag, a missing argument, a malformed value or URL (clap's own code).
pub(crate) const USAGE: u8 = 2;
/// The broker could not be reached, or the connection was lost.
pub(crate) const CONNECTION: u8 = 3;
/// A request timed out or nobody answers its subject.
pub(crate) const TIMEOUT: u8 = 4;

/// The exit codes, for `mitto --help`.
pub(crate) const HELP: &str = "Exit codes:
  0  success
  1  other failures: refused by the broker (authentication, permissions, limits), a bad configuration
  2  usage: unknown flag, missing argument, malformed value or URL
  3  the broker could not be reached, or the connection was lost
  4  a request timed out, or no service answers its subject (no_responders)";

/// Why a command failed, and the code it exits with.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) code: u8,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(code: u8, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }

    /// A failure while connecting: a timeout there means the broker did not answer.
    pub(crate) fn connecting(e: mitto::Error) -> Failure {
        let code = match e.status() {
            Status::TIMEOUT
            | Status::UNAVAILABLE
            | Status::PROTOCOL_ERROR
            | Status::UNSUPPORTED_VERSION => CONNECTION,
            _ => OTHER,
        };
        Failure::new(code, e.to_string())
    }

    pub(crate) fn exit(&self) -> ExitCode {
        eprintln!("mitto: error: {}", self.message);
        ExitCode::from(self.code)
    }
}

impl From<mitto::Error> for Failure {
    fn from(e: mitto::Error) -> Failure {
        let code = match e.status() {
            Status::TIMEOUT | Status::NO_RESPONDERS => TIMEOUT,
            Status::UNAVAILABLE => CONNECTION,
            _ => OTHER,
        };
        Failure::new(code, e.to_string())
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure::new(OTHER, message)
    }
}

//! The library's error at its boundary: the kind of failure, so that front
//! ends can map it — `vethctl` to an exit status, `veth-cni` to a CNI error
//! code. Inside, work fails with `anyhow` and context; the typed errors
//! deeper down (a description refused: [`ModelError`]; something not ours
//! in the way: [`Refusal`]) say the kind, and converting an `anyhow::Error`
//! finds them in its chain.

use crate::{model::ModelError, plan::Refusal};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The input cannot be: a description, a configuration, an argument.
    /// Names the field and the fix; nothing was changed. CNI code 7.
    #[error("{field}: {message}")]
    InvalidConfig { field: String, message: String },
    /// The namespace path is not a network namespace (CNI code 4).
    #[error("{path}: {reason}")]
    InvalidNetns { path: String, reason: String },
    /// Something of the same name or range exists that is not ours; the
    /// message names it and nothing was changed.
    #[error("{0}")]
    Conflict(String),
    /// A transient condition (CNI code 11): retrying is expected to work.
    #[error("{0}")]
    TryAgain(String),
    /// A kernel or file operation failed.
    #[error(transparent)]
    Failed(anyhow::Error),
}

impl Error {
    /// `vethctl`'s exit status: 2 for input it refuses (as for the usage
    /// errors clap reports), 3 for a conflict with what is not ours, 4 for
    /// try again, 1 for any other failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::InvalidConfig { .. } | Error::InvalidNetns { .. } => 2,
            Error::Conflict(_) => 3,
            Error::TryAgain(_) => 4,
            Error::Failed(_) => 1,
        }
    }

    /// The kind of `e`, from the first typed error in its chain (context
    /// added on the way is kept only in [`Error::Failed`]: print `e` itself
    /// for the whole story).
    pub fn kind_of(e: &anyhow::Error) -> Error {
        for cause in e.chain() {
            if let Some(m) = cause.downcast_ref::<ModelError>() {
                return Error::InvalidConfig {
                    field: m.field.clone(),
                    message: m.message.clone(),
                };
            }
            if let Some(r) = cause.downcast_ref::<Refusal>() {
                return Error::Conflict(r.0.clone());
            }
            if let Some(ours) = cause.downcast_ref::<Error>() {
                return match ours {
                    Error::InvalidConfig { field, message } => Error::InvalidConfig {
                        field: field.clone(),
                        message: message.clone(),
                    },
                    Error::InvalidNetns { path, reason } => Error::InvalidNetns {
                        path: path.clone(),
                        reason: reason.clone(),
                    },
                    Error::Conflict(m) => Error::Conflict(m.clone()),
                    Error::TryAgain(m) => Error::TryAgain(m.clone()),
                    Error::Failed(_) => continue,
                };
            }
        }
        Error::Failed(anyhow::anyhow!("{e:#}"))
    }
}

impl From<anyhow::Error> for Error {
    fn from(e: anyhow::Error) -> Error {
        match Error::kind_of(&e) {
            Error::Failed(_) => Error::Failed(e),
            kind => kind,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn the_kind_is_found_under_context() {
        let model: anyhow::Result<()> = Err(ModelError {
            field: "pods[1].ipv4".into(),
            message: "outside pod_cidr".into(),
        }
        .into());
        let e = Error::from(model.context("invalid topology file t.toml").unwrap_err());
        assert!(matches!(&e, Error::InvalidConfig { field, .. } if field == "pods[1].ipv4"));
        assert_eq!(e.exit_code(), 2);

        let refused: anyhow::Result<()> = Err(Refusal("bridge br-1 is Docker's".into()).into());
        let e = Error::from(refused.context("up").unwrap_err());
        assert!(matches!(&e, Error::Conflict(m) if m.contains("Docker")));
        assert_eq!(e.exit_code(), 3);

        let ours: anyhow::Result<()> = Err(Error::TryAgain("busy".into()).into());
        assert_eq!(Error::from(ours.context("ADD").unwrap_err()).exit_code(), 4);

        let other = anyhow::anyhow!("EPERM").context("creating veth");
        let e = Error::from(other);
        assert_eq!(e.exit_code(), 1);
        assert_eq!(
            format!("{e:#}"),
            "creating veth: EPERM",
            "the chain is kept"
        );
    }
}

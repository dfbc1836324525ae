//! SQLSTATE codes for errors, the same on every front end: Postgres reports them natively,
//! HTTP `/v1/sql` and Flight SQL add them to the message.
//!
//! Codes come from error variants: semflow's own (`Error::InvalidArgument`, which SQL functions
//! raise through [`Error::sql_argument`]) and DataFusion's. DataFusion reports an unknown
//! table or function only as planning text, so those two are recognised by their wording
//! (pinned by `tests/pg.rs`, which fails if an upgrade changes it).

use datafusion::common::SchemaError;
use datafusion::error::DataFusionError;

use crate::error::Error;

/// The SQLSTATE of a semflow error.
pub fn of_error(e: &Error) -> &'static str {
    match e {
        Error::DataFusion(d) => of_datafusion(d),
        Error::InvalidArgument(_) | Error::Inference(semflow_inference::Error::TooLong { .. }) => {
            "22023"
        }
        // serialization_failure: another writer committed first; the client may retry.
        Error::IndexConflict { .. } => "40001",
        _ => "XX000",
    }
}

/// The SQLSTATE of a DataFusion error, by its root cause.
pub fn of_datafusion(e: &DataFusionError) -> &'static str {
    match e.find_root() {
        DataFusionError::SQL(..) => "42601",
        DataFusionError::NotImplemented(_) => "0A000",
        DataFusionError::ResourcesExhausted(_) => "53000",
        DataFusionError::SchemaError(schema, _) => match schema.as_ref() {
            SchemaError::FieldNotFound { .. } => "42703",
            SchemaError::AmbiguousReference { .. } => "42702",
            SchemaError::DuplicateQualifiedField { .. }
            | SchemaError::DuplicateUnqualifiedField { .. } => "42701",
        },
        DataFusionError::External(inner) => inner.downcast_ref::<Error>().map_or("XX000", of_error),
        DataFusionError::Plan(message) => of_plan_message(message),
        _ => "XX000",
    }
}

/// DataFusion's planning errors carry no kind: unknown tables and functions are known by
/// their wording (`table '…' not found`, `Invalid function '…'`), anything else is 42000.
fn of_plan_message(message: &str) -> &'static str {
    if message.starts_with("table '") && message.contains("' not found") {
        "42P01"
    } else if message.starts_with("Invalid function '") {
        "42883"
    } else {
        "42000"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_error_variants() {
        let plan = |m: &str| DataFusionError::Plan(m.into());
        assert_eq!(
            of_datafusion(&plan("table 'datafusion.public.x' not found")),
            "42P01"
        );
        assert_eq!(of_datafusion(&plan("Invalid function 'nope'")), "42883");
        assert_eq!(of_datafusion(&plan("some other planning error")), "42000");
        // A semflow function's bad argument is typed, whatever its words.
        let arg = Error::sql_argument("embed(): dims must be between 1 and 64".into());
        assert_eq!(of_datafusion(&arg), "22023");
        let wrapped = DataFusionError::Context("planning".into(), Box::new(arg));
        assert_eq!(of_datafusion(&wrapped), "22023");
        assert_eq!(
            of_datafusion(&DataFusionError::NotImplemented("x".into())),
            "0A000"
        );
        assert_eq!(
            of_datafusion(&DataFusionError::Execution("argument x".into())),
            "XX000"
        );
        let missing = SchemaError::FieldNotFound {
            field: Box::new(datafusion::common::Column::from_name("nope")),
            valid_fields: Vec::new(),
        };
        let missing = DataFusionError::SchemaError(Box::new(missing), Box::new(None));
        assert_eq!(of_datafusion(&missing), "42703");
        let conflict = Error::IndexConflict {
            uri: "x".into(),
            message: "y".into(),
        };
        assert_eq!(of_error(&conflict), "40001");
    }
}

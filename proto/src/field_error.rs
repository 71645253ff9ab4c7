//! [`FieldError`]: a message its receiver cannot read, named by the field.
//!
//! Every receiver's conversion module (the worker's specs, the client's
//! results, grid values on either side) refuses what it cannot read rather
//! than guess, and says where: the field's path through the message, as a
//! person would write it (`probe.basis`, `user.layers[2]`,
//! `runs[1].probes[0].spectrum`).

/// A field its receiver cannot read: where it is, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}`: {problem}")]
pub struct FieldError {
    /// The field's path, e.g. `probe.basis` or `runs[2].probes[0].spectrum`.
    pub field: String,
    /// What is wrong with it.
    pub problem: String,
}

impl FieldError {
    /// `field` is wrong in the way `problem` says.
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        FieldError { field: field.into(), problem: problem.into() }
    }

    /// A required field that is absent.
    pub fn missing(field: impl Into<String>) -> Self {
        FieldError::new(field, "missing")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_reads_as_the_field_then_the_problem() {
        assert_eq!(
            FieldError::new("probe.basis", "unknown projection basis 7").to_string(),
            "`probe.basis`: unknown projection basis 7"
        );
        assert_eq!(FieldError::missing("runs[1].spectrum"), FieldError::new("runs[1].spectrum", "missing"));
    }
}

//! Helpers shared by the kiln tests (and, by path, by kiln-cli's).

pub mod roots;

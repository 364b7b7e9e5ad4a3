//! kiln image stage (see the crate's documentation once it lands).

//! kiln kiln stage (see the crate's documentation once it lands).
